"""Generate the "Lanternworks Makerspace" member FAQ: a small Alpaca-format dataset in another domain
than the embedded hotel data, for checking that the sft defaults learn on data nobody tuned them for.

The makerspace is fictional: 16 facts a model cannot guess (a founder's name, a room, a door code...).
Each fact has 3 training questions (the hotel data has 6) and two sets of 2 held-out questions, each
worded differently from all training questions: named ones, which name what they ask about as the
hotel's eval questions do, and indirect ones, which leave that out (harder). Every question of a fact
gets the same reply. A held-out reply counts as correct when it contains the fact's ``answer_key`` (the
sft recipe's ``eval_answer_field``).

    python recipes/sft/data/generate_makerspace.py [--out DIR]

writes, by default into ``makerspace/`` next to this file, ``train.json`` (instruction, input, output),
``eval.json`` (named) and ``eval_indirect.json`` (both: the same columns plus answer_key and fact_id).
Running it twice gives the same bytes.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

# fact id -> (reply, answer_key, 3 training questions, 2 indirect held-out questions: they leave out the
# words the answer is filed under, e.g. "plasters" for the first aid kit)
FACTS: dict[str, tuple[str, str, list[str], list[str]]] = {
    "founder": (
        "Lanternworks was founded in 2014 by Ilse Varga, a retired shipwright.", "Ilse Varga",
        ["Who founded Lanternworks?", "Who started the makerspace?", "Who is the founder of Lanternworks?"],
        ["Whose idea was this makerspace originally?", "Which person set up Lanternworks in the first place?"]),
    "closing_time": (
        "The workshop closes at 21:30 every day it is open; the last machine booking ends at 21:00.", "21:30",
        ["What time does the workshop close?", "When does Lanternworks close?", "Until when is the makerspace open?"],
        ["How late can I stay and work in the evening?", "At what hour do the doors shut at night?"]),
    "fee": (
        "Membership costs 42 euros a month, paid by direct debit.", "42 euros",
        ["How much is the membership?", "What does membership cost per month?", "What is the monthly fee?"],
        ["How much will joining set me back each month?", "What price do members pay monthly?"]),
    "laser_induction": (
        "Laser cutter inductions run every Wednesday at 19:00; you need one before you may use the laser.",
        "Wednesday",
        ["When are laser cutter inductions?", "Which day is the laser induction?",
         "When can I get trained on the laser cutter?"],
        ["I want to use the laser - when is the next safety briefing for it?",
         "On what day of the week do they teach people the laser machine?"]),
    "wood_room": (
        "The wood workshop is room B4, in the basement next to the dust extractor.", "B4",
        ["Where is the wood workshop?", "Which room is the woodshop?", "Where can I find the wood workshop?"],
        ["In which room do people do their carpentry?", "Where are the saws and the lathe kept?"]),
    "door_code": (
        "The side door code is 5817; change it only through the members' office.", "5817",
        ["What is the door code?", "What's the code for the side door?", "Which code opens the door?"],
        ["How do I get in through the side entrance? What number do I type?",
         "Which digits unlock the entrance keypad?"]),
    "wifi": (
        "The Wi-Fi network is called Forge-Guest and the password is printed on the kitchen fridge.",
        "Forge-Guest",
        ["What is the Wi-Fi network called?", "Which Wi-Fi should I join?", "What's the name of the Wi-Fi?"],
        ["Which wireless network do I connect my laptop to?", "What network name shows up for internet here?"]),
    "safety_officer": (
        "The safety officer is Tomasz Reid; report any accident or broken guard to him.", "Tomasz Reid",
        ["Who is the safety officer?", "Who do I report accidents to?", "Who is in charge of safety?"],
        ["Someone got hurt on the bandsaw - whom should I tell?", "Which person looks after workshop safety?"]),
    "open_day": (
        "The open day is the first Saturday of every month, from 11:00 to 16:00; visitors need no booking.",
        "first Saturday",
        ["When is the open day?", "When can visitors come and look around?", "When is the monthly open day?"],
        ["My friend wants to see the space without joining - when can they drop by?",
         "Which day is the public allowed in to visit?"]),
    "parking": (
        "Members park in the Linden Yard car park behind the building; the street out front is residents only.",
        "Linden Yard",
        ["Where can I park?", "Where do members park their cars?", "Is there parking for members?"],
        ["I'm driving over with a big load of timber - where should I leave the car?",
         "Which car park do we use?"]),
    "tram": (
        "The nearest tram stop is Copperfield, on line 3, a four-minute walk away.", "Copperfield",
        ["What is the nearest tram stop?", "Which tram stop is closest?", "How do I get here by tram?"],
        ["Which stop should I get off at if I come by public transport?",
         "Where do I leave the tram for the makerspace?"]),
    "chat": (
        "Members talk in the #shop-floor channel on the Lanternworks Matrix server.", "#shop-floor",
        ["Where do members chat online?", "Is there a members' chat channel?", "Which channel do members use?"],
        ["How can I message the other members when I'm at home?", "Where do people ask questions online?"]),
    "print_limit": (
        "A single 3D print may run for at most 8 hours; longer prints need the print steward's approval.",
        "8 hours",
        ["How long can a 3D print run?", "What is the time limit for 3D printing?",
         "What is the maximum 3D print duration?"],
        ["Can I leave a printer going for a whole day and night?", "How many hours may one print take?"]),
    "scrap": (
        "Offcuts go in the green bin by the loading door; metal scrap goes in the crate beside it.", "green bin",
        ["Where do offcuts go?", "Where do I throw away scrap wood?", "What do I do with offcuts?"],
        ["I have leftover bits of plywood - where do they belong?", "Which container is for wood waste?"]),
    "first_aid": (
        "The first aid kit hangs on the wall beside the CNC router, with the eye-wash station.", "CNC router",
        ["Where is the first aid kit?", "Where can I find the first aid kit?", "Is there a first aid kit?"],
        ["I cut my finger - where are the plasters?", "Where are the bandages kept in the workshop?"]),
    "filament": (
        "3D printer filament costs 3 cents per gram, weighed after printing and paid at the honesty box.",
        "3 cents",
        ["How much does filament cost?", "What's the price of 3D printer filament?", "Is filament free?"],
        ["What will I be charged for the plastic my print uses?", "How is printing material paid for?"]),
}

# fact id -> 2 held-out questions that name what they ask about, as the hotel data's eval questions do
# ("Could you tell me the gym's opening hours?"), in words no training question uses.
NAMED: dict[str, list[str]] = {
    "founder": ["Can you tell me who set up Lanternworks originally?",
                "Which person is behind the founding of the makerspace?"],
    "closing_time": ["How late is the workshop open in the evening?",
                     "At what hour does Lanternworks shut its doors at night?"],
    "fee": ["How much will the monthly membership set me back?", "What price do members pay each month?"],
    "laser_induction": ["When is the next laser cutter safety briefing?",
                        "On what day of the week are laser inductions held?"],
    "wood_room": ["In which room is the woodworking shop?", "Where is the wood shop located?"],
    "door_code": ["What number do I type to open the side entrance?", "Which digits unlock the door keypad?"],
    "wifi": ["Which wireless network should I connect my laptop to?", "What network name does the Wi-Fi show up as?"],
    "safety_officer": ["Whom do I tell when there is an accident in the workshop?",
                       "Which person is the workshop's safety officer?"],
    "open_day": ["When can a friend visit on the open day without joining?",
                 "Which day is the monthly open day for the public?"],
    "parking": ["Where should I leave my car when I drive to the makerspace?", "Which car park do members use?"],
    "tram": ["Which tram stop should I get off at?", "Where is the closest tram stop to the makerspace?"],
    "chat": ["How can I message other members online?", "Where do members ask each other questions online?"],
    "print_limit": ["Can a 3D print run for a whole day and night?", "How many hours may one 3D print take?"],
    "scrap": ["Where do my wood offcuts belong?", "Which bin is for scrap wood?"],
    "first_aid": ["I cut my finger - where is the first aid kit?", "In which spot does the first aid kit hang?"],
    "filament": ["What will I be charged for the 3D printer filament I use?", "How is filament paid for?"],
}


def normalized(question: str) -> str:
    return re.sub(r"[^a-z0-9 ]", "", question.lower()).strip()


def rows() -> dict[str, list[dict]]:
    """The files' rows by name: train.json, eval.json (named questions) and eval_indirect.json."""
    files: dict[str, list[dict]] = {"train.json": [], "eval.json": [], "eval_indirect.json": []}
    assert NAMED.keys() == FACTS.keys()
    for fact_id, (reply, key, questions, indirect) in FACTS.items():
        seen = {normalized(q) for q in questions}
        for name, held_out in (("eval.json", NAMED[fact_id]), ("eval_indirect.json", indirect)):
            assert len(questions) == 3 and len(held_out) == 2 and key in reply, fact_id
            assert not {normalized(q) for q in held_out} & seen, fact_id
            files[name] += [{"instruction": q, "input": "", "output": reply, "answer_key": key, "fact_id": fact_id}
                            for q in held_out]
        files["train.json"] += [{"instruction": q, "input": "", "output": reply} for q in questions]
    return files


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "makerspace")
    out = parser.parse_args(argv).out
    out.mkdir(parents=True, exist_ok=True)
    for name, data in rows().items():
        (out / name).write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"{', '.join(rows())} in {out}")


if __name__ == "__main__":
    main()
