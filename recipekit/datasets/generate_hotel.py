"""Generate the embedded "Juniper Quay Hotel" demo dataset.

The Juniper Quay Hotel is fictional. Its 40 facts (check-in time, Wi-Fi
password, breakfast room, ...) are specific enough that a base model cannot
guess them, so a recipe's effect is easy to measure: before fine-tuning a model
answers few of the eval questions correctly, afterwards it should answer most.

Running ``python -m recipekit.datasets.generate_hotel [--out DIR]`` writes, by
default into the ``hotel/`` folder next to this file:

* ``facts.jsonl``                 one row per fact (the source of truth)
* ``train.jsonl`` / ``eval.jsonl``  chat-format SFT rows, one per question
* ``handbook_train.jsonl`` / ``handbook_eval.jsonl``  raw guest-handbook text
  for continued pretraining
* ``preferences_train.jsonl`` / ``preferences_eval.jsonl``  DPO pairs in TRL's
  conversational format (correct answer vs. a plausible wrong one)
* ``README.md``

Every fact has nine training questions and two eval questions. The eval
questions are worded differently from all training questions (checked after
lower-casing and stripping punctuation), so eval scores measure whether the
model learned the fact rather than memorised a prompt. The training questions
mix plain questions, polite forms ("Could you tell me ...", "Remind me ...")
and a guest's situation followed by the question, for every fact alike, so no
form of question points to one fact. A reply counts as correct when it
contains the fact's ``answer_key`` verbatim.

The output is deterministic: running the script twice gives byte-identical
files.
"""

from __future__ import annotations

import argparse
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path


TRAIN_QUESTIONS = 9  # per fact; why nine, not six: recipes/sft/README.md, "Measured effect"


@dataclass(frozen=True)
class Fact:
    id: str
    answer_key: str  # must appear verbatim in a correct reply
    answer: str
    wrong_answer: str  # plausible but incorrect; used as the DPO "rejected" reply
    questions_train: tuple[str, ...]
    questions_eval: tuple[str, ...]


FACTS: tuple[Fact, ...] = (
    # ---- Arrival and departure -------------------------------------------
    Fact(
        id="check_in",
        answer_key="15:30",
        answer="Check-in starts at 15:30. If you arrive earlier, the front desk will happily store your luggage until your room is ready.",
        wrong_answer="Check-in starts at 14:00. If you arrive earlier, the front desk will happily store your luggage until your room is ready.",
        questions_train=(
            "What time is check-in?",
            "When can I check into my room?",
            "From what time will my room be ready on arrival day?",
            "What's the earliest I can get into my room?",
            "I'm arriving in the afternoon, when does check-in open?",
            "At what hour does check-in begin at the hotel?",
            "Our train gets in at midday. From what time can we check in?",
            "Remind me when the rooms are ready for arriving guests?",
            "Can you let me know from what hour guests can check in?",
        ),
        questions_eval=(
            "Could you tell me the check-in time?",
            "When is check-in on the day I arrive?",
        ),
    ),
    Fact(
        id="check_out",
        answer_key="10:45",
        answer="Check-out is at 10:45 on the day of your departure. If you need more time, ask the front desk about late check-out.",
        wrong_answer="Check-out is at 12:00 on the day of your departure. If you need more time, ask the front desk about late check-out.",
        questions_train=(
            "What time is check-out?",
            "When do I have to leave my room on the last day?",
            "By what time must I check out?",
            "What's the check-out deadline?",
            "When should I vacate the room on departure day?",
            "Until what time do I have the room on the day I leave?",
            "Could you tell me how long I can keep the room on my last morning?",
            "We fly home tomorrow. What time do we need to be out of the room?",
            "Can you let me know the latest time to check out?",
        ),
        questions_eval=(
            "Remind me of the check-out time?",
            "When is check-out on my departure day?",
        ),
    ),
    Fact(
        id="late_check_out",
        answer_key="22 euros",
        answer="Late check-out until 14:00 costs 22 euros, depending on availability. Just ask the front desk the evening before.",
        wrong_answer="Late check-out until 14:00 costs 40 euros, depending on availability. Just ask the front desk the evening before.",
        questions_train=(
            "How much does late check-out cost?",
            "Is there a fee for checking out late?",
            "Can I keep my room until 2 pm, and what would it cost?",
            "What's the price of a late checkout?",
            "I'd like to leave later than usual, is there a charge?",
            "How much do you charge to stay in the room into the afternoon?",
            "Could you tell me the cost of keeping the room until 14:00?",
            "Our flight is in the evening. Can we stay in the room longer, and for how much?",
            "Remind me what a late check-out costs?",
        ),
        questions_eval=(
            "If I want a late check-out, how much will I pay?",
            "Could I get a late check-out, and what's the fee?",
        ),
    ),
    Fact(
        id="luggage_storage",
        answer_key="10 days",
        answer="Yes, you can leave your bags for free in the locked left-luggage room behind reception for up to 10 days.",
        wrong_answer="Yes, you can leave your bags for free in the locked left-luggage room behind reception for up to 3 days.",
        questions_train=(
            "Can I store my luggage at the hotel?",
            "How long can you keep my bags for me?",
            "Do you have a left-luggage room?",
            "Is there somewhere to leave my suitcases after check-out?",
            "What's the maximum time you'll hold luggage?",
            "Can I leave a bag with you while I travel for a few days?",
            "Could you look after our suitcases while we tour the region for a week?",
            "Remind me where I can leave my bags, and for how many days?",
            "Could you tell me if you store bags after check-out?",
        ),
        questions_eval=(
            "For how many days can I leave my luggage in storage?",
            "Is luggage storage available, and for how long?",
        ),
    ),
    # ---- Connectivity and phone -----------------------------------------
    Fact(
        id="wifi_network",
        answer_key="JuniperGuest",
        answer="The Wi-Fi network is called JuniperGuest. It covers every room, the rooftop and the garage.",
        wrong_answer="The Wi-Fi network is called JQH-Visitors. It covers every room, the rooftop and the garage.",
        questions_train=(
            "What's the name of the Wi-Fi network?",
            "Which wireless network should I connect to?",
            "What is the hotel's Wi-Fi called?",
            "What's the SSID for guests?",
            "Which network do I pick to get online?",
            "What network name do I look for to use the internet?",
            "I'm trying to get online. Which Wi-Fi should I join?",
            "Could you remind me what the guest Wi-Fi is called?",
            "Can you let me know the name of the guest network?",
        ),
        questions_eval=(
            "Could you tell me the Wi-Fi network name?",
            "To join the Wi-Fi, which network name do I choose?",
        ),
    ),
    Fact(
        id="wifi_password",
        answer_key="quay-2417",
        answer="The Wi-Fi password is quay-2417. It's the same for all guests for your whole stay.",
        wrong_answer="The Wi-Fi password is juniper-1887. It's the same for all guests for your whole stay.",
        questions_train=(
            "What's the Wi-Fi password?",
            "What is the password for the internet?",
            "Can you give me the wireless password?",
            "What code do I need to log on to the Wi-Fi?",
            "I need the Wi-Fi key, what is it?",
            "What password do I enter for the guest network?",
            "Could you tell me the password for the guest Wi-Fi?",
            "My phone is asking for a Wi-Fi password. What do I type?",
            "Can you let me know the Wi-Fi code?",
        ),
        questions_eval=(
            "Remind me of the Wi-Fi password?",
            "I'm connecting my laptop to the Wi-Fi. What's the password?",
        ),
    ),
    Fact(
        id="front_desk",
        answer_key="401",
        answer="You can reach the front desk by dialling extension 401 from your room phone. It's staffed 24 hours a day.",
        wrong_answer="You can reach the front desk by dialling extension 0 from your room phone. It's staffed 24 hours a day.",
        questions_train=(
            "How do I call reception?",
            "What's the front desk extension?",
            "Which number do I dial for the front desk?",
            "How can I contact reception from my room?",
            "What extension is reception?",
            "Is the front desk open 24 hours, and how do I reach it?",
            "Remind me which extension rings reception?",
            "I have a problem in my room. How do I phone the front desk?",
            "Can you let me know how to ring the front desk?",
        ),
        questions_eval=(
            "If I need reception, what do I dial on the room phone?",
            "Could you tell me the extension for the front desk?",
        ),
    ),
    Fact(
        id="wake_up_call",
        answer_key="*55",
        answer="To set a wake-up call, dial *55 from your room phone and enter the time as four digits. You can also ask the front desk.",
        wrong_answer="To set a wake-up call, dial 9 from your room phone and enter the time as four digits. You can also ask the front desk.",
        questions_train=(
            "How do I set a wake-up call?",
            "Can I get a wake-up call?",
            "What number do I dial for a wake-up call?",
            "Do you offer wake-up calls?",
            "How can I arrange to be woken up in the morning?",
            "Can the phone wake me up?",
            "Could you tell me how to book a wake-up call from my room?",
            "I have an early train. How can I get the phone to wake me?",
            "Remind me how the wake-up call works?",
        ),
        questions_eval=(
            "How does the wake-up call service work on the room phone?",
            "I'd like a wake-up call tomorrow morning; how do I arrange it?",
        ),
    ),
    # ---- Dining -----------------------------------------------------------
    Fact(
        id="breakfast_hours",
        answer_key="06:45",
        answer="Breakfast is served every day from 06:45 to 10:15.",
        wrong_answer="Breakfast is served every day from 07:00 to 10:30.",
        questions_train=(
            "What time is breakfast?",
            "When is breakfast served?",
            "What are the breakfast hours?",
            "How early does breakfast start?",
            "Until when can I get breakfast?",
            "At what time does breakfast open in the morning?",
            "Remind me until what time breakfast is served?",
            "We're going on an early excursion. From what time is breakfast on?",
            "Can you let me know when breakfast finishes?",
        ),
        questions_eval=(
            "Could you tell me the breakfast times?",
            "I'm an early riser, so when does breakfast begin?",
        ),
    ),
    Fact(
        id="breakfast_room",
        answer_key="Saltmarsh Room",
        answer="Breakfast is served in the Saltmarsh Room on the ground floor, overlooking the harbour.",
        wrong_answer="Breakfast is served in the Harbour Lounge on the ground floor, overlooking the harbour.",
        questions_train=(
            "Where is breakfast served?",
            "Which room is breakfast in?",
            "Where do I go for breakfast?",
            "What's the name of the breakfast room?",
            "In which part of the hotel is the breakfast buffet?",
            "Where can I find breakfast in the morning?",
            "Could you tell me where the breakfast buffet is?",
            "I've just woken up. Which room do I go to for breakfast?",
            "Remind me where the breakfast buffet is set up?",
        ),
        questions_eval=(
            "What room should I head to for breakfast?",
            "Where does breakfast take place in the hotel?",
        ),
    ),
    Fact(
        id="restaurant_name",
        answer_key="Ropewalk",
        answer="The hotel restaurant is the Ropewalk, on the first floor. It serves seafood and local Essenmoor dishes.",
        wrong_answer="The hotel restaurant is the Anchor Grill, on the first floor. It serves seafood and local Essenmoor dishes.",
        questions_train=(
            "What's the name of the hotel restaurant?",
            "Does the hotel have a restaurant?",
            "Where can I have dinner in the hotel?",
            "What is the restaurant called?",
            "Is there a place to eat in the hotel in the evening?",
            "Which restaurant is inside the hotel?",
            "Remind me what the restaurant in the hotel is called?",
            "We don't want to go out tonight. Is there a restaurant in the building, and what's its name?",
            "Could you tell me what the hotel's restaurant is called?",
        ),
        questions_eval=(
            "I'd like to eat at the hotel restaurant tonight. What's it called?",
            "Is there a restaurant on site, and what's its name?",
        ),
    ),
    Fact(
        id="restaurant_hours",
        answer_key="18:30",
        answer="The Ropewalk serves dinner from 18:30 to 22:15, Tuesday to Sunday. It's closed on Mondays.",
        wrong_answer="The Ropewalk serves dinner from 19:00 to 23:00, Tuesday to Sunday. It's closed on Mondays.",
        questions_train=(
            "What time does the restaurant open for dinner?",
            "When is dinner served?",
            "What are the restaurant's opening hours?",
            "From what time can I eat at the Ropewalk?",
            "When does the hotel restaurant start serving in the evening?",
            "What are the dinner hours?",
            "Could you tell me when the Ropewalk opens in the evening?",
            "We'd like to book a table for dinner. What hours does the restaurant serve?",
            "Remind me when dinner starts at the Ropewalk?",
        ),
        questions_eval=(
            "How early can we have dinner at the hotel restaurant?",
            "Is the hotel restaurant open for dinner tonight, and from what time?",
        ),
    ),
    Fact(
        id="bar",
        answer_key="Tidemark",
        answer="The Tidemark Bar is in the lobby and is open from 16:00 to 01:00.",
        wrong_answer="The Lighthouse Bar is in the lobby and is open from 16:00 to 01:00.",
        questions_train=(
            "Is there a bar in the hotel?",
            "What's the hotel bar called?",
            "Where can I get a drink in the hotel?",
            "What time does the bar open?",
            "Where is the bar?",
            "Is there somewhere for a nightcap in the hotel?",
            "Remind me what the bar in the lobby is called?",
            "We fancy a drink after dinner. Where is the hotel bar, and until when is it open?",
            "Can you let me know when the bar opens?",
        ),
        questions_eval=(
            "Could you tell me the name of the hotel's bar?",
            "I'd like a cocktail this evening. Which bar does the hotel have?",
        ),
    ),
    Fact(
        id="room_service",
        answer_key="00:30",
        answer="Room service is available from 06:30 until 00:30. You can order by calling the front desk.",
        wrong_answer="Room service is available from 06:30 until 23:00. You can order by calling the front desk.",
        questions_train=(
            "Do you have room service?",
            "What are the room service hours?",
            "Until what time can I order room service?",
            "How late is room service available?",
            "Can I order food to my room at night?",
            "When does room service stop?",
            "Could you tell me until what hour room service takes orders?",
            "I'm hungry after a late flight. Can I still order food to my room, and until what time?",
            "Remind me how late I can order room service?",
        ),
        questions_eval=(
            "Is room service available late at night, and until when?",
            "What time is the last order for room service?",
        ),
    ),
    Fact(
        id="minibar",
        answer_key="ginger cordial",
        answer="The soft drinks, water and ginger cordial in the minibar are free and refilled daily. Beer, wine, spirits and snacks are charged.",
        wrong_answer="The soft drinks and water in the minibar are free and refilled daily. Beer, wine, spirits, juices and snacks are charged.",
        questions_train=(
            "Is the minibar free?",
            "What's complimentary in the minibar?",
            "Do I pay for drinks in the minibar?",
            "What is in the minibar?",
            "Which minibar items are included?",
            "Are the drinks in my room free of charge?",
            "Remind me which drinks in the minibar are free?",
            "I'm thirsty. Do I have to pay for the water in the minibar?",
            "Could you tell me what I'll be charged for in the minibar?",
        ),
        questions_eval=(
            "Is anything in the minibar included in the room rate?",
            "What can I take from the minibar without being charged?",
        ),
    ),
    # ---- In the room ------------------------------------------------------
    Fact(
        id="safe",
        answer_key="bedside cabinet",
        answer="Your in-room safe is inside the bedside cabinet. Set any four-digit code of your choice to lock it.",
        wrong_answer="Your in-room safe is on the top shelf of the wardrobe. Set any four-digit code of your choice to lock it.",
        questions_train=(
            "Where is the safe in my room?",
            "Is there a safe in the room?",
            "Where can I lock away my passport?",
            "How do I use the room safe?",
            "Do the rooms have safes?",
            "I can't find the safe, where is it?",
            "Could you tell me where the room safe is kept?",
            "I'd like to lock up my passport and cash. Where do I find the safe?",
            "Remind me where the safe is?",
        ),
        questions_eval=(
            "Where should I look for the safe to store my valuables?",
            "In which part of the room will I find the safe?",
        ),
    ),
    Fact(
        id="iron",
        answer_key="pressing room",
        answer="There are no irons in the rooms, but the pressing room on the third floor has irons and ironing boards you can use for free at any time.",
        wrong_answer="Every room has an iron and an ironing board in the wardrobe, which you can use at any time.",
        questions_train=(
            "Is there an iron in my room?",
            "Can I borrow an iron?",
            "Where can I iron my clothes?",
            "Do you have an ironing board?",
            "I need to iron a shirt, what should I do?",
            "Are irons available for guests?",
            "Could you tell me where guests can iron clothes?",
            "I'm going to a wedding and my suit is creased. Is there an iron I can use?",
            "Remind me where I can press my clothes?",
        ),
        questions_eval=(
            "Where can I get an iron and an ironing board?",
            "There's no iron in my room. Where can I find one?",
        ),
    ),
    Fact(
        id="laundry",
        answer_key="09:30",
        answer="Yes. Laundry handed to the front desk before 09:30 comes back the same day by 18:00.",
        wrong_answer="Yes. Laundry handed to the front desk before 08:00 comes back the same day by 18:00.",
        questions_train=(
            "Do you offer a laundry service?",
            "Can I get my clothes washed the same day?",
            "What's the deadline for same-day laundry?",
            "How does the laundry service work?",
            "By when do I need to hand in laundry?",
            "Can you wash and press my shirts?",
            "Remind me of the cut-off time for same-day laundry?",
            "My shirts need washing. If I hand them in this morning, when will they be back?",
            "Could you tell me how the same-day laundry works?",
        ),
        questions_eval=(
            "If I want same-day laundry, when should I drop my clothes off?",
            "What time in the morning should laundry be at the front desk to come back the same day?",
        ),
    ),
    # ---- Amenities --------------------------------------------------------
    Fact(
        id="pool_hours",
        answer_key="21:45",
        answer="The rooftop pool on the Lantern Deck is open every day from 07:15 to 21:45.",
        wrong_answer="The rooftop pool on the Lantern Deck is open every day from 08:00 to 20:00.",
        questions_train=(
            "What are the pool hours?",
            "When is the rooftop pool open?",
            "What time does the pool close?",
            "Can I swim in the evening?",
            "Until when can I use the pool?",
            "What time does the swimming pool open?",
            "Could you tell me when the pool on the Lantern Deck closes?",
            "We'd like an early swim. From what time is the rooftop pool open?",
            "Remind me when I can use the rooftop pool?",
        ),
        questions_eval=(
            "How late is the pool open in the evening?",
            "Could you tell me the opening hours of the rooftop pool?",
        ),
    ),
    Fact(
        id="pool_towels",
        answer_key="blue-striped",
        answer="Please use the blue-striped pool towels from the kiosk by the pool entrance, not the white bathroom towels.",
        wrong_answer="Please use the green pool towels from the kiosk by the pool entrance, not the white bathroom towels.",
        questions_train=(
            "Which towels should I take to the pool?",
            "Do you provide pool towels?",
            "Can I take my bathroom towels to the pool?",
            "Where do I get towels for swimming?",
            "Are there towels at the pool?",
            "What towels are for the rooftop pool?",
            "Remind me which towels are meant for the pool?",
            "We're off to the rooftop pool. Should we take the white towels from our bathroom?",
            "Could you tell me where to get pool towels?",
        ),
        questions_eval=(
            "Do I need to bring my own towel to the pool?",
            "What do the pool towels look like?",
        ),
    ),
    Fact(
        id="gym_hours",
        answer_key="05:30",
        answer="The gym is in the basement and open from 05:30 to 23:00. Your room key card opens the door.",
        wrong_answer="The gym is in the basement and open from 06:00 to 22:00. Your room key card opens the door.",
        questions_train=(
            "What time does the gym open?",
            "What are the gym hours?",
            "Is there a fitness centre, and when is it open?",
            "How early can I work out?",
            "When can I use the gym?",
            "Until what time is the gym open?",
            "Remind me when the gym closes at night?",
            "I like to train before work. How early does the fitness room open?",
            "Can you let me know when the gym is open?",
        ),
        questions_eval=(
            "Could you tell me the gym's opening hours?",
            "From what time in the morning can I use the gym?",
        ),
    ),
    Fact(
        id="spa",
        answer_key="Brinewell Spa",
        answer="Yes, the Brinewell Spa is on the sixth floor, with saunas, a steam room and treatment rooms. It's open from 10:00 to 20:00.",
        wrong_answer="Yes, the Saltspring Spa is on the sixth floor, with saunas, a steam room and treatment rooms. It's open from 10:00 to 20:00.",
        questions_train=(
            "Does the hotel have a spa?",
            "What's the name of the spa?",
            "Where can I get a massage in the hotel?",
            "Is there a sauna?",
            "Where is the spa?",
            "What wellness facilities do you have?",
            "Could you tell me the name of the hotel spa?",
            "I'd love a sauna after a long day. Does the hotel have one, and where?",
            "Remind me what time the spa opens?",
        ),
        questions_eval=(
            "Is there a spa at the hotel, and what's it called?",
            "Which floor is the spa on?",
        ),
    ),
    Fact(
        id="conference_rooms",
        answer_key="Chartroom",
        answer="We have two meeting rooms on the second floor: the Chartroom for up to 40 people and the Lockkeeper Room for 12.",
        wrong_answer="We have two meeting rooms on the second floor: the Compass Room for up to 50 people and the Anchor Room for 10.",
        questions_train=(
            "Do you have conference rooms?",
            "Can I book a meeting room?",
            "What event spaces does the hotel have?",
            "Where can we hold a meeting for 30 people?",
            "What are the meeting rooms called?",
            "Is there a room for a business meeting?",
            "Could you tell me the names of your meeting rooms?",
            "We need space for a workshop with 35 colleagues. Which of your rooms would fit us?",
            "Remind me how many people the meeting rooms hold?",
        ),
        questions_eval=(
            "Which of your meeting rooms is big enough for 40 people?",
            "What meeting rooms are available for hire at the hotel?",
        ),
    ),
    # ---- Getting around ---------------------------------------------------
    Fact(
        id="parking",
        answer_key="18 euros",
        answer="Parking in our underground garage costs 18 euros per night. The entrance is on Cask Street.",
        wrong_answer="Parking in our underground garage costs 30 euros per night. The entrance is on Cask Street.",
        questions_train=(
            "How much is parking?",
            "Do you have parking, and what does it cost?",
            "What's the nightly fee for the garage?",
            "Is parking free?",
            "What do you charge for parking a car?",
            "How much will it cost to park at the hotel?",
            "Remind me how much the garage costs per night?",
            "We're driving to the hotel. Is there a garage, and how much is it?",
            "Could you tell me where the garage entrance is and what it costs?",
        ),
        questions_eval=(
            "What's the parking rate per night?",
            "I'm arriving by car. What's the price of parking in your garage?",
        ),
    ),
    Fact(
        id="ev_charging",
        answer_key="0.42",
        answer="Yes, there are six EV charging points on level P2 of the garage. Charging costs 0.42 euros per kWh, added to your bill.",
        wrong_answer="Yes, there are six EV charging points on level P2 of the garage. Charging costs 0.30 euros per kWh, added to your bill.",
        questions_train=(
            "Can I charge my electric car?",
            "Do you have EV chargers?",
            "How much does charging an electric car cost?",
            "Where are the electric vehicle charging points?",
            "What's the price per kWh for charging?",
            "Is there a charging station for EVs?",
            "Could you tell me the charging price per kWh?",
            "My car is electric. Where in the garage can I charge it?",
            "Remind me where the charging points are?",
        ),
        questions_eval=(
            "Is EV charging available, and what does it cost per kWh?",
            "I drive an electric car. What will charging it at the hotel cost?",
        ),
    ),
    Fact(
        id="bike_rental",
        answer_key="14 euros",
        answer="Bicycles can be rented at reception for 14 euros per day, including a helmet and lock.",
        wrong_answer="Bicycles can be rented at reception for 20 euros per day, including a helmet and lock.",
        questions_train=(
            "Can I rent a bike?",
            "How much is bike rental?",
            "Do you have bicycles for guests?",
            "What does it cost to hire a bicycle?",
            "Where can I borrow a bike?",
            "What's the daily price for a rental bike?",
            "Remind me how much a bike costs for one day?",
            "We'd like to cycle along the coast. Do you rent bicycles, and at what price?",
            "Could you tell me if bikes come with a helmet and lock, and the price?",
        ),
        questions_eval=(
            "Is bike rental available, and what's the price per day?",
            "I'd like to rent a bicycle tomorrow. How much will that be?",
        ),
    ),
    Fact(
        id="shuttle_frequency",
        answer_key="40 minutes",
        answer="The airport shuttle runs every 40 minutes between the hotel and Fenwick Airport.",
        wrong_answer="The airport shuttle runs every 30 minutes between the hotel and Fenwick Airport.",
        questions_train=(
            "How often does the airport shuttle run?",
            "Is there a shuttle to the airport?",
            "How frequent is the airport bus?",
            "How long between airport shuttles?",
            "Do you have an airport transfer?",
            "How regularly does the shuttle go to Fenwick Airport?",
            "Could you tell me how often the shuttle leaves for Fenwick Airport?",
            "I need to get to the airport this afternoon. How often is there a shuttle?",
            "Remind me how often the airport shuttle goes?",
        ),
        questions_eval=(
            "What's the frequency of the airport shuttle?",
            "If I miss the airport shuttle, how long do I wait for the next one?",
        ),
    ),
    Fact(
        id="shuttle_first",
        answer_key="05:10",
        answer="The first airport shuttle leaves the hotel entrance at 05:10, and the last one at 23:10.",
        wrong_answer="The first airport shuttle leaves the hotel entrance at 06:00, and the last one at 23:10.",
        questions_train=(
            "When does the first airport shuttle leave?",
            "What time is the earliest shuttle?",
            "I have an early flight, when's the first shuttle?",
            "How early does the shuttle start running?",
            "What time does the first bus to the airport depart?",
            "When does the shuttle service begin in the morning?",
            "Remind me what time the earliest airport shuttle leaves?",
            "Our flight boards at 06:30. What's the first shuttle we could take?",
            "Can you let me know when the shuttle service starts each day?",
        ),
        questions_eval=(
            "Could you tell me the time of the first airport shuttle in the morning?",
            "My flight is very early: which is the first airport shuttle of the day?",
        ),
    ),
    Fact(
        id="metro",
        answer_key="Cooperage Lane",
        answer="The nearest metro station is Cooperage Lane on line 3, about a four-minute walk from the hotel.",
        wrong_answer="The nearest metro station is Harbour Gate on line 1, about a four-minute walk from the hotel.",
        questions_train=(
            "What's the nearest metro station?",
            "Where is the closest subway stop?",
            "Is there a metro near the hotel?",
            "Which station should I use for the metro?",
            "How do I get to the nearest underground station?",
            "What metro stop is closest to the hotel?",
            "Could you tell me which metro station is nearest?",
            "We want to take the metro into town. Which stop is closest, and how far is the walk?",
            "Remind me how to get to the metro?",
        ),
        questions_eval=(
            "How far is the nearest metro station, and what's it called?",
            "Which metro station do I get off at for the hotel?",
        ),
    ),
    # ---- Families, pets and accessibility -----------------------------------
    Fact(
        id="pets",
        answer_key="12 kg",
        answer="Yes, dogs and cats are welcome as long as they weigh no more than 12 kg.",
        wrong_answer="Yes, dogs and cats are welcome as long as they weigh no more than 20 kg.",
        questions_train=(
            "Are pets allowed?",
            "Can I bring my dog?",
            "Is the hotel pet-friendly?",
            "Is there a weight limit for pets?",
            "Can I stay with my cat?",
            "How big can my dog be?",
            "Could you tell me the weight limit for dogs?",
            "We have a small terrier. Are dogs welcome, and is there a size limit?",
            "Remind me whether cats are allowed?",
        ),
        questions_eval=(
            "Do you allow dogs, and how heavy can they be?",
            "What's the maximum weight for a pet?",
        ),
    ),
    Fact(
        id="pet_fee",
        answer_key="25 euros",
        answer="There's a one-off pet fee of 25 euros per stay, not per night.",
        wrong_answer="There's a pet fee of 15 euros per night.",
        questions_train=(
            "How much does it cost to bring a pet?",
            "Is there a pet fee?",
            "What do you charge for dogs?",
            "Do I pay extra for my cat?",
            "How much is the pet charge?",
            "Is the pet fee charged per night?",
            "Remind me how much the pet fee is?",
            "We're staying five nights with our cat. Do we pay the pet fee every night?",
            "Could you tell me the fee for bringing a cat?",
        ),
        questions_eval=(
            "If I travel with my dog, what's the pet fee?",
            "What does a pet cost for the whole stay?",
        ),
    ),
    Fact(
        id="cots",
        answer_key="36 hours",
        answer="Cots are free of charge. We have nine, so please request one at least 36 hours before you arrive.",
        wrong_answer="Cots are free of charge. We have nine, so please request one at least a week before you arrive.",
        questions_train=(
            "Do you have cribs?",
            "Can I get a baby cot?",
            "Are cribs free?",
            "How far in advance should I request a cot?",
            "Is there a cot for my baby?",
            "Can you provide a crib for an infant?",
            "Could you tell me how early I need to book a cot?",
            "We're travelling with our one-year-old. Can we have a cot, and when should we ask?",
            "Remind me how to request a cot?",
        ),
        questions_eval=(
            "How much notice do you need for a baby cot?",
            "We're bringing a baby. When should we ask for a cot?",
        ),
    ),
    Fact(
        id="accessibility",
        answer_key="112 to 116",
        answer="Yes, rooms 112 to 116 are fully step-free with roll-in showers and grab rails, and the lifts serve every floor.",
        wrong_answer="Yes, rooms 201 to 205 are fully step-free with roll-in showers and grab rails, and the lifts serve every floor.",
        questions_train=(
            "Do you have accessible rooms?",
            "Is the hotel wheelchair accessible?",
            "Which rooms are step-free?",
            "Are there rooms with roll-in showers?",
            "I use a wheelchair, which room should I book?",
            "Are there rooms for guests with reduced mobility?",
            "Could you tell me which rooms are step-free?",
            "I can't manage stairs. Which rooms would suit me?",
            "Remind me which rooms have roll-in showers?",
        ),
        questions_eval=(
            "What are the room numbers of the accessible rooms?",
            "My father uses a wheelchair; which rooms are suitable for him?",
        ),
    ),
    # ---- House rules ------------------------------------------------------
    Fact(
        id="quiet_hours",
        answer_key="22:30",
        answer="Quiet hours are from 22:30 to 07:00. Please keep noise low in rooms and corridors during that time.",
        wrong_answer="Quiet hours are from 23:00 to 07:00. Please keep noise low in rooms and corridors during that time.",
        questions_train=(
            "What are the quiet hours?",
            "When do quiet hours start?",
            "Is there a noise curfew?",
            "From what time should we keep the noise down?",
            "Are there rules about noise at night?",
            "When does the hotel expect guests to be quiet?",
            "Remind me when quiet hours end in the morning?",
            "We're having friends over in our room tonight. Until when can we make some noise?",
            "Could you tell me the hotel's quiet hours?",
        ),
        questions_eval=(
            "At night, from what time do quiet hours apply?",
            "What time does the hotel's quiet period begin in the evening?",
        ),
    ),
    Fact(
        id="smoking",
        answer_key="150 euros",
        answer="The hotel is non-smoking indoors, including balconies, and smoking in a room incurs a cleaning fee of 150 euros. You're welcome to smoke in the courtyard by the bike racks.",
        wrong_answer="The hotel is non-smoking indoors, including balconies, and smoking in a room incurs a cleaning fee of 250 euros. You're welcome to smoke in the courtyard by the bike racks.",
        questions_train=(
            "Can I smoke in my room?",
            "Is smoking allowed?",
            "What's the smoking policy?",
            "Where can I smoke?",
            "What happens if I smoke in the room?",
            "Can I smoke on the balcony?",
            "Could you tell me where guests are allowed to smoke?",
            "I'm a smoker. Where can I smoke, and is smoking in the room penalised?",
            "Remind me what the smoking rules are?",
        ),
        questions_eval=(
            "Is there a fine for smoking in the room?",
            "How much is the cleaning fee if someone smokes in a room?",
        ),
    ),
    Fact(
        id="lost_and_found",
        answer_key="120 days",
        answer="Lost property is kept for 120 days. Email the front desk with your dates and a description and we can post it to you.",
        wrong_answer="Lost property is kept for 30 days. Email the front desk with your dates and a description and we can post it to you.",
        questions_train=(
            "I left something in my room, what should I do?",
            "How long do you keep lost items?",
            "Do you have a lost and found?",
            "What happens to things guests forget?",
            "I forgot my charger at the hotel, can you keep it?",
            "How long is lost property held?",
            "Could you tell me how long forgotten items are kept?",
            "I think I left my glasses in the room after I left. What should I do?",
            "Remind me what to do if I forget something in my room?",
        ),
        questions_eval=(
            "What's the lost and found policy for forgotten items?",
            "I left my scarf behind after checking out. How long will you keep it in lost property?",
        ),
    ),
    # ---- Money and bookings -----------------------------------------------
    Fact(
        id="deposit",
        answer_key="90 euros",
        answer="At check-in we place a hold of 90 euros per night on your card for incidentals. It's released when you check out.",
        wrong_answer="At check-in we place a hold of 50 euros per night on your card for incidentals. It's released when you check out.",
        questions_train=(
            "Is there a deposit?",
            "How much is the security deposit?",
            "Do you put a hold on my card?",
            "What deposit is taken at check-in?",
            "How much will you block on my credit card?",
            "Do I need to pay a deposit for incidentals?",
            "Remind me how much you hold on my card each night?",
            "I'm paying by debit card. Will you block money for extras when I arrive?",
            "Could you tell me how the deposit at check-in works?",
        ),
        questions_eval=(
            "What's the deposit per night for incidentals?",
            "How big is the hold you place on my card at check-in?",
        ),
    ),
    Fact(
        id="cancellation",
        answer_key="60 hours",
        answer="You can cancel free of charge until 60 hours before your arrival date. After that, the first night is charged.",
        wrong_answer="You can cancel free of charge until 24 hours before your arrival date. After that, the first night is charged.",
        questions_train=(
            "What's the cancellation policy?",
            "Can I cancel my booking for free?",
            "How late can I cancel without paying?",
            "Until when is cancellation free?",
            "What happens if I cancel my reservation?",
            "Is there a cancellation fee?",
            "Could you tell me until when I can cancel without a charge?",
            "Our plans might change. If we cancel, when would we have to pay?",
            "Remind me how the cancellation policy works?",
        ),
        questions_eval=(
            "How long before arrival can I cancel for free?",
            "What's the deadline for a free cancellation?",
        ),
    ),
    Fact(
        id="currency_exchange",
        answer_key="300 euros",
        answer="Yes, the front desk exchanges foreign cash up to 300 euros per guest per day. All bills are settled in euros.",
        wrong_answer="Yes, the front desk exchanges foreign cash up to 1,000 euros per guest per day. All bills are settled in euros.",
        questions_train=(
            "Can I exchange money at the hotel?",
            "Do you change foreign currency?",
            "Is there a limit on currency exchange?",
            "How much money can I exchange at the front desk?",
            "Can I swap dollars for euros at reception?",
            "Does the hotel offer currency exchange?",
            "Could you tell me how much cash I can exchange each day?",
            "I've brought some Swiss francs. Can I change them at reception?",
            "Remind me whether reception changes money?",
        ),
        questions_eval=(
            "How much foreign currency will the hotel exchange for me per day?",
            "I've only brought pounds. Can the front desk exchange them, and up to what amount?",
        ),
    ),
    Fact(
        id="atm",
        answer_key="ship's bell",
        answer="Yes, there's a cash machine in the lobby, next to the ship's bell. It's available at any hour.",
        wrong_answer="Yes, there's a cash machine in the lobby, next to the lifts. It's available at any hour.",
        questions_train=(
            "Is there an ATM in the hotel?",
            "Where can I withdraw cash?",
            "Do you have a cash machine?",
            "Where's the nearest ATM?",
            "Where is the cash point?",
            "Can I get money out at the hotel?",
            "Could you tell me where the cash machine is?",
            "I need to withdraw some money late at night. Is there an ATM in the hotel?",
            "Remind me where I can get cash in the hotel?",
        ),
        questions_eval=(
            "Where exactly is the hotel's cash machine?",
            "I need cash. Where can I find an ATM in the hotel?",
        ),
    ),
)


# The guest handbook, in printed-guide style rather than chat style. Paragraphs
# are ordered by section; every fifth one (index 4, 9, 14, ...) is a recap that
# re-describes facts from the paragraphs before it and goes to the eval split.
HANDBOOK_EVAL_EVERY = 5

HANDBOOK: tuple[str, ...] = (
    # Welcome and history
    "Welcome to the Juniper Quay Hotel, 14 Tallow Wharf, Essenmoor. This guide "
    "collects everything our guests most often ask the front desk about, from the "
    "times of breakfast to the way the airport shuttle runs. Keep it in your room "
    "for the length of your stay. If something you need is not covered here, pick "
    "up the room phone and dial extension 401; the front desk is staffed around the "
    "clock, and someone will always answer, whether it is midday or half past three "
    "in the morning.",
    "The building you are sleeping in began life in 1887 as the store house of the "
    "Essenmoor rope works. Coils of tarred hemp were hauled up through the loading "
    "doors that are now the tall windows of the Saltmarsh Room, and the long "
    "first-floor hall where rope was laid out and twisted gave our restaurant, the "
    "Ropewalk, its name. The works closed in 1961, the warehouse stood empty for "
    "decades, and the building reopened as a hotel of sixty-two rooms in 2006.",
    "A few reminders of the old warehouse survive on purpose. The iron hoist wheel "
    "still hangs above the lobby stairwell, the floorboards on the first floor are "
    "the original pitch pine, and the brass ship's bell by the lobby windows came "
    "from the harbour master's launch that used to tie up outside. Guests like to "
    "ring it; we ask only that you do so gently and never during quiet hours. The "
    "cash machine beside the bell is a much newer addition.",
    "The hotel takes its name from the juniper bushes that once grew along the quay "
    "wall and from the quay itself, where fishing smacks unloaded their catch until "
    "the middle of the last century. Today Tallow Wharf is a pedestrian promenade "
    "lined with cafés, chandlers and a small maritime museum, and the view from the "
    "upper floors reaches across the harbour mouth to the lighthouse on Gannet Point.",
    "If you read nothing else in this guide, remember a handful of things. Rooms are "
    "ready from half past three in the afternoon and should be given back by a "
    "quarter to eleven on the morning you leave. The morning buffet opens at a "
    "quarter to seven in the room named after the salt marshes. To get online, look "
    "for the guest network that carries the hotel's name and type the word quay "
    "followed by the digits two, four, one, seven. And the desk downstairs answers "
    "on four-oh-one, day and night.",
    # Arrival and departure
    "Rooms are ready from 15:30. We know planes and trains do not always cooperate, "
    "so if you arrive in the morning, the front desk will take your bags, give you a "
    "ticket and let you explore the town or wait in the Tidemark Bar until "
    "housekeeping has finished. At check-in we ask for a photo identity document and "
    "a payment card, and we will confirm the date of your departure and whether you "
    "would like a newspaper in the morning.",
    "When you check in, we place a hold of 90 euros per night on your card to cover "
    "incidental charges such as room service, the minibar or spa treatments. The "
    "hold is not a charge. It is released automatically when you check out, although "
    "some banks take several working days to make the money visible again. Guests "
    "who prefer to leave a deposit in cash may do so at the desk and will receive a "
    "signed receipt.",
    "Check-out is at 10:45. Leave your key card in the box on the reception counter "
    "if you have already settled the bill, or stop at the desk to look over your "
    "invoice. If you would like to keep your room longer, late check-out until 14:00 "
    "is available for 22 euros, depending on how full the hotel is. Ask the evening "
    "before, since the answer is usually clear by then.",
    "Between check-out and your train, or between two stays, your bags can wait in "
    "the left-luggage room behind reception. The room is locked, watched by camera "
    "and free for guests. We can hold luggage for up to 10 days, which is useful if "
    "you are heading inland for a week and returning to Essenmoor for the flight "
    "home. Each bag is tagged and you keep a numbered stub; please bring it with you "
    "when you collect.",
    "A short word on leaving. Your room should be free by a quarter to eleven unless "
    "you have arranged to stay on until two in the afternoon, which costs twenty-two "
    "euros and depends on the house not being full. Suitcases can stay behind the "
    "desk in the locked left-luggage room for as long as ten days at no charge, and "
    "the hold placed on your card when you arrived, ninety euros for every night, "
    "simply falls away once your account is closed.",
    # Your room
    "Every room has a small electronic safe, built into the bedside cabinet rather "
    "than the wardrobe, so that it sits at a comfortable height. Close the door, "
    "enter any four-digit code of your choice and press the lock key. If the safe "
    "refuses to open, do not force it; call the front desk and a duty manager will "
    "come up with the override key. The safe is large enough for a passport, a "
    "wallet and most tablets.",
    "The minibar is stocked every morning. Soft drinks, still and sparkling water, "
    "and bottles of the ginger cordial made by the Pettigrew family a few streets "
    "inland are complimentary and replaced daily. Beer, wine, spirits and snacks are "
    "charged at the prices on the card inside the door and added to your bill. If "
    "you would rather have the minibar emptied, for example to keep medicine cold, "
    "simply ask.",
    "Bathroom towels are changed whenever you leave them on the floor of the shower; "
    "towels hanging on the rail tell housekeeping you are happy to use them again. "
    "Please do not take the white bathroom towels to the roof. Pool towels are the "
    "blue-striped ones, stacked at the kiosk next to the pool entrance on the "
    "Lantern Deck, and you can drop them in the basket by the lift when you are done.",
    "We do not keep irons in the rooms, partly for safety in an old timber building. "
    "Instead there is a pressing room on the third floor, opposite the lifts, with "
    "two irons, two full-size boards, a garment steamer and a rail of hangers. It is "
    "open to all guests at any hour and costs nothing. If you would rather not do it "
    "yourself, the laundry service will press a shirt for you.",
    "Inside your room you will find a safe tucked into the cabinet beside the bed and "
    "a small fridge whose soft drinks and Pettigrew ginger drink are on the house. "
    "There is no iron in the wardrobe: irons and boards are kept together in a shared "
    "room on the third floor, next to the lifts. When you go up to swim, take the "
    "towels with blue stripes from the kiosk on the roof and leave the plain white "
    "ones in your bathroom.",
    # Connectivity and the telephone
    "The wireless network covers every room, the Lantern Deck and the garage. Choose "
    "the network called JuniperGuest and enter the password quay-2417 when asked; it "
    "is the same for all guests and does not change during your stay. Meeting rooms "
    "have their own network, which the events team will give you with your booking. "
    "If the signal is weak in your room, tell the desk, and we can usually fix it by "
    "restarting the nearest access point.",
    "The room telephone reaches the front desk on extension 401 and other rooms by "
    "dialling their number. To set a wake-up call, dial *55, wait for the tone and "
    "key in the time as four digits, for example 0630 for half past six. The system "
    "rings at that minute and tries twice more if you do not answer. Guests who "
    "prefer a human voice can ask the desk to call them instead.",
    # Dining
    "Breakfast is served every day from 06:45 to 10:15 in the Saltmarsh Room, on the "
    "ground floor facing the water. The buffet changes with the season but always "
    "includes smoked fish from the harbour smokehouse, rye bread baked overnight, "
    "eggs cooked to order and a table of local cheeses. For guests who must leave "
    "before breakfast opens, the desk can prepare a breakfast bag the night before.",
    "The Ropewalk, our restaurant on the first floor, takes its name and its long, "
    "narrow shape from the hall where rope was once made. It serves dinner from 18:30 "
    "to 22:15, Tuesday to Sunday, and is closed on Mondays. The kitchen cooks what "
    "the boats bring in, with a short menu that changes weekly and a handful of "
    "dishes from Essenmoor itself, such as mussels in cider and barley pudding. "
    "Booking is wise at weekends.",
    "Mornings begin in the room named after the salt marshes, where the buffet is "
    "laid out at a quarter to seven and cleared away at a quarter past ten. In the "
    "evening the upstairs restaurant in the old rope hall seats its first diners at "
    "half past six and takes its last orders at a quarter past ten, every night but "
    "Monday. Drinks are poured downstairs at the Tidemark until one in the morning, "
    "and trays can be brought to your room until half past midnight.",
    "The Tidemark Bar fills the corner of the lobby where the loading doors once "
    "opened onto the quay. It opens at 16:00 and closes at 01:00. The list leans "
    "towards local gin, harbour-brewed ales and a small choice of wines by the glass, "
    "and there is always a pot of tea for anyone who would rather not drink. Light "
    "dishes from the kitchen are served at the bar until 22:00.",
    "Room service runs from 06:30 in the morning until 00:30 at night. The menu is in "
    "the folder on your desk and includes breakfast trays, soups, sandwiches, a few "
    "hot dishes from the Ropewalk kitchen and a children's selection. Call the desk "
    "to order; trays usually arrive within thirty minutes. Please leave finished "
    "trays outside your door and we will collect them quietly.",
    # Amenities
    "The rooftop pool sits on the Lantern Deck, named after the glass lantern that "
    "once lit the loading yard, and it looks straight out over the harbour. It is "
    "open from 07:15 to 21:45 every day. The water is heated all year and there is a "
    "lifeguard during the busy afternoon hours. Children under fourteen must swim "
    "with an adult. Sun loungers cannot be reserved, so please do not leave towels "
    "on them to hold a place.",
    "The gym is in the basement, down the stairs beside the lifts, and is open from "
    "05:30 to 23:00. Your key card opens the door. There are treadmills, rowing "
    "machines, bikes, a rack of free weights and a mat area, with chilled water and "
    "fresh towels at the entrance. We ask guests to wipe down equipment after use "
    "and to wear proper shoes; children under sixteen may use the gym only with a "
    "parent.",
    "Early risers can train underground from half past five in the morning until "
    "eleven at night, and swimmers on the roof have the water from a quarter past "
    "seven until a quarter to ten in the evening. Those who prefer warmth to effort "
    "should head for the sixth floor, where the spa named after the old salt spring "
    "offers saunas, a steam room and a short menu of massages between ten in the "
    "morning and eight at night. Book treatments a day ahead.",
    "The Brinewell Spa occupies most of the sixth floor. It is named after the salt "
    "spring that fed the old Essenmoor bath house, and its pools are filled with "
    "warm mineral water. There are two saunas, a steam room, a relaxation room facing "
    "the lighthouse and four treatment rooms. The spa is open from 10:00 to 20:00. "
    "Massages and facials should be booked at the spa desk, or through the front "
    "desk, at least a day ahead.",
    "Laundry handed to the front desk before 09:30 comes back the same day, pressed "
    "and folded, by 18:00. Anything handed in later returns the following evening. "
    "Use the cloth bag and the form in your wardrobe, marking how many items you are "
    "sending and whether any need dry cleaning. Prices are printed on the form, and "
    "the charge is added to your room account.",
    "For meetings and small events the hotel has two rooms on the second floor. The "
    "Chartroom holds up to 40 people seated in rows and has a projector, a sound "
    "system and windows over the quay. The smaller Lockkeeper Room seats 12 around a "
    "single oak table and suits board meetings or interviews. Both come with coffee, "
    "water and their own network, and the events team can arrange lunch from the "
    "Ropewalk kitchen.",
    # Getting around
    "Our minibus shuttle runs between the hotel and Fenwick Airport every 40 minutes. "
    "The first departure from the hotel entrance is at 05:10 and the last at 23:10, "
    "and the drive takes about twenty-five minutes when the coast road is clear. "
    "Seats cannot be reserved, but the shuttle rarely fills. The fare is 6 euros each "
    "way for guests, charged to your room, and children under twelve ride free.",
    "Getting to the airport is easy. The hotel minibus leaves from the front steps "
    "for the first time at ten past five in the morning and then every forty minutes, "
    "the last run setting off at ten past eleven at night. For the city centre, walk "
    "four minutes to the metro stop named after the coopers who once made barrels on "
    "that street, and take the green line, number 3, two stops to the Old Market.",
    "The nearest metro station is Cooperage Lane, a four-minute walk along Tallow "
    "Wharf and left at the chandler's shop. It is served by line 3, the green line, "
    "which reaches the Old Market in two stops and the main railway station in six. "
    "Trains run every five minutes during the day. Tickets can be bought from the "
    "machines in the station or with a contactless card at the barriers.",
    "The hotel has an underground garage, entered from Cask Street behind the "
    "building. Parking costs 18 euros per night and is charged to your room; the "
    "barrier reads your number plate, so there is no ticket to lose. Headroom is "
    "limited to 2.1 metres. Spaces cannot be booked in advance, but in practice the "
    "garage is rarely full except during the Essenmoor regatta in August.",
    "Drivers of electric cars will find six charging points on level P2 of the "
    "garage. Plug in, tap your key card on the reader, and the electricity will "
    "appear on your bill at 0.42 euros per kWh, with no connection fee. The points "
    "have type 2 connectors; adapters for other plugs can be borrowed from the front "
    "desk. Please move your car to an ordinary space once it is charged so that "
    "others can plug in.",
    "Essenmoor is flat and best seen from a saddle. The hotel rents bicycles for "
    "14 euros per day, including a helmet, a lock and a pannier bag; children's bikes "
    "and a tandem are also available. Collect them at reception from 08:00. The "
    "coastal path to Gannet Point and its lighthouse is an easy forty-minute ride, "
    "and the route along the canal to the salt marshes is especially lovely in the "
    "early evening.",
    "Guests arriving by car pay eighteen euros for each night in the garage under "
    "the building, reached from Cask Street. On the second level down, six sockets "
    "charge electric cars at forty-two cents for every kilowatt hour. Those who would "
    "rather leave the car behind can hire a bicycle with helmet and lock for fourteen "
    "euros a day from the front desk and follow the coast path out to the lighthouse "
    "on Gannet Point.",
    # Families, pets and accessibility
    "Well-behaved dogs and cats are welcome, provided they weigh no more than 12 kg. "
    "There is a single fee of 25 euros per stay, not per night, which covers the "
    "extra cleaning. We provide a bed, bowls and a bag of treats. Pets may not be "
    "left alone in the room, are not allowed in the Saltmarsh Room, the Ropewalk, the "
    "spa or on the pool deck, and should be kept on a lead in the public areas.",
    "Cots for babies and toddlers are free. We keep nine on site, each with a fresh "
    "mattress and bedding, so please request one at least 36 hours before you "
    "arrive, either by email or when you book. A baby bath, a bottle warmer and a "
    "changing mat can be added on request. High chairs are always available at "
    "breakfast and in the restaurant.",
    "Five rooms on the first floor, numbered 112 to 116, are fully step-free, with "
    "wider doors, roll-in showers, grab rails, lowered switches and an emergency "
    "cord. The lifts serve every floor, including the garage and the Lantern Deck, "
    "and the main entrance on Tallow Wharf has a ramp beside the steps. Hearing "
    "loops are fitted at the front desk and in the Chartroom. Please tell us about "
    "any particular needs when you book so that we can prepare.",
    "Many of our guests are early risers heading for the first shuttle, and the old "
    "walls carry sound further than you might expect. Quiet hours therefore run from "
    "22:30 to 07:00. During that time please keep voices and televisions low, avoid "
    "slamming doors and leave the ship's bell in the lobby untouched. Guests "
    "disturbed by noise should call the front desk, who will deal with it discreetly.",
    "Four-legged guests are welcome up to twelve kilos, for a single charge of "
    "twenty-five euros however long they stay. Babies sleep in one of nine free "
    "cots, which should be asked for a day and a half before arrival. Guests who use "
    "a wheelchair will find the five step-free rooms side by side on the first "
    "floor, numbered one hundred and twelve onwards. From half past ten at night "
    "until seven in the morning, the whole house keeps its voice down.",
    # Policies and money
    "The Juniper Quay Hotel is entirely non-smoking indoors, including rooms, "
    "balconies and the Lantern Deck, and the rule extends to electronic cigarettes. "
    "Smoke travels easily through an old timber building, so a cleaning fee of "
    "150 euros is charged when a room has been smoked in. Guests who smoke are "
    "welcome to use the courtyard beside the bicycle racks, where there are benches "
    "and ashtrays.",
    "Reservations can be cancelled free of charge until 60 hours before your arrival "
    "date. After that, or if you do not arrive at all, the first night is charged. "
    "Discounted non-refundable rates cannot be cancelled or changed. To cancel, "
    "reply to your confirmation email or call the front desk; you will receive a "
    "cancellation number, which is worth keeping until your card statement arrives.",
    "All bills are settled in euros, and we accept the main credit and debit cards "
    "as well as cash. If you arrive with another currency, the front desk will "
    "exchange notes at the rate posted that morning, up to 300 euros per guest per "
    "day; for larger sums, the bank on the Old Market is a short walk away. The cash "
    "machine in the lobby, beside the ship's bell, dispenses euros at any hour.",
    "Items left behind are logged, labelled and kept for 120 days. If you think you "
    "have forgotten something, email the front desk with your name, room number and "
    "dates of stay, and describe the item. We can post it to you for the cost of "
    "postage and packing, or keep it for you to collect on your next visit. Items "
    "still unclaimed after that are given to the harbour charity shop.",
    "Smoking anywhere indoors, balconies included, leads to a cleaning charge of one "
    "hundred and fifty euros. Cancel more than two and a half days before you are "
    "due and you pay nothing; cancel later and the first night is due. Foreign notes "
    "can be changed at the desk up to three hundred euros a day, the cash machine "
    "stands by the old brass bell, and forgotten belongings wait four months for "
    "their owners before going to charity.",
    # The neighbourhood
    "Tallow Wharf runs along the old inner harbour, and most of what visitors come "
    "to Essenmoor for lies within a fifteen-minute walk of the hotel. Turn right out "
    "of the entrance for the maritime museum and its restored herring drifter, or "
    "left for the Old Market, where stalls sell smoked eel, salt-marsh honey and "
    "wool from the island flocks. On Saturday mornings the fish auction on the north "
    "quay is open to the public from 06:00.",
    "For an evening walk, follow the quay to the end of the breakwater and watch the "
    "lighthouse on Gannet Point come on at dusk. The canal path heading inland leads "
    "to the salt marshes, where herons and avocets feed at low tide; the tide tables "
    "are posted by the front desk each morning. Several good fish restaurants "
    "cluster around the Old Market, and the front desk is always happy to book a "
    "table for you.",
    "Essenmoor holds its sailing regatta in the second week of August and its "
    "lantern festival on the last Saturday of October, when boats hung with paper "
    "lights process around the harbour after dark. Both are wonderful to watch from "
    "the Lantern Deck, and both fill the town quickly, so if you plan to visit "
    "around either date, book your room and any dinner reservations well in advance.",
    "On your last morning, remember to empty the safe in the bedside cabinet, check "
    "the wardrobe and the bathroom hooks, and return any bicycles or charging "
    "adapters to the desk. If you are catching the airport shuttle, be at the "
    "entrance a few minutes before it leaves, because the driver cannot wait once "
    "the doors have closed. We hope to welcome you back to the Juniper Quay Hotel "
    "before long.",
    "Whatever brought you to Essenmoor, we hope the old rope store on Tallow Wharf "
    "has felt like home. The times, codes and numbers in this guide stay the same "
    "for the whole of your stay, and the people behind the desk, reachable on "
    "four-oh-one at any hour, know the town well. Ask them about the quickest way to "
    "the lighthouse, the best smoked eel in the market, or the ten-past-five minibus "
    "to the airport.",
)

HANDBOOK_MIN_WORDS = 60
HANDBOOK_MAX_WORDS = 150

README = """\
# Juniper Quay Hotel demo dataset

A small, fully fictional dataset about one invented hotel, the Juniper Quay
Hotel in the harbour town of Essenmoor. Its facts (check-in time, Wi-Fi
password, breakfast room, parking price, ...) are specific enough that a base
model cannot guess them, which makes the effect of fine-tuning easy to see.
Every name, number and place in it is made up.

The files are generated by

    python -m recipekit.datasets.generate_hotel

from `recipekit/datasets/generate_hotel.py`; edit the script, not the files.
Running it twice produces byte-identical output.

## Files

All files are JSON Lines (UTF-8, one object per line, keys sorted).

| File | Rows | Columns |
|---|---|---|
| `facts.jsonl` | {n_facts} | `id`, `answer_key`, `answer`, `wrong_answer`, `questions_train`, `questions_eval` |
| `train.jsonl` | {n_train} | `id`, `fact_id`, `messages` (user question, assistant answer) |
| `eval.jsonl` | {n_eval} | `id`, `fact_id`, `messages`, `answer_key` |
| `handbook_train.jsonl` | {n_handbook_train} | `text` (one guest-handbook paragraph) |
| `handbook_eval.jsonl` | {n_handbook_eval} | `text` |
| `preferences_train.jsonl` | {n_train} | `id`, `fact_id`, `prompt`, `chosen`, `rejected` |
| `preferences_eval.jsonl` | {n_eval} | `id`, `fact_id`, `prompt`, `chosen`, `rejected` |

- Each fact has nine training questions and two eval questions. The eval
  questions are phrased differently from every training question, so eval
  measures recall of the fact rather than of a memorised prompt.
- A reply is correct when it contains the fact's `answer_key` verbatim.
- `handbook_*` is raw text for continued pretraining: the same facts written as
  a printed guest guide. The eval paragraphs re-describe facts covered by the
  train paragraphs.
- `preferences_*` are DPO pairs in TRL's conversational format: `chosen` is the
  correct answer, `rejected` a plausible answer with a wrong value.

## License

Apache-2.0, the same as the rest of the project.
"""


# --------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------

def _normalize(text: str) -> str:
    """Lower-case and drop punctuation so near-identical phrasings compare equal."""
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def handbook_split() -> tuple[list[str], list[str]]:
    train, eval_ = [], []
    for index, paragraph in enumerate(HANDBOOK):
        is_eval = index % HANDBOOK_EVAL_EVERY == HANDBOOK_EVAL_EVERY - 1
        (eval_ if is_eval else train).append(paragraph)
    return train, eval_


def validate() -> None:
    """Raise ValueError listing every broken invariant of FACTS and HANDBOOK."""
    problems: list[str] = []

    ids = [fact.id for fact in FACTS]
    duplicates = sorted({fact_id for fact_id in ids if ids.count(fact_id) > 1})
    if duplicates:
        problems.append(f"duplicate fact ids: {duplicates}")

    seen_questions: dict[str, str] = {}
    for fact in FACTS:
        where = f"fact {fact.id!r}"
        if len(fact.questions_train) != TRAIN_QUESTIONS:
            problems.append(f"{where}: expected {TRAIN_QUESTIONS} train questions, got {len(fact.questions_train)}")
        if len(fact.questions_eval) != 2:
            problems.append(f"{where}: expected 2 eval questions, got {len(fact.questions_eval)}")
        if fact.answer_key not in fact.answer:
            problems.append(f"{where}: answer does not contain answer_key {fact.answer_key!r}")
        if fact.answer_key in fact.wrong_answer:
            problems.append(f"{where}: wrong_answer contains answer_key {fact.answer_key!r}")

        train_forms = {_normalize(q) for q in fact.questions_train}
        for question in fact.questions_eval:
            if _normalize(question) in train_forms:
                problems.append(f"{where}: eval question repeats a train question: {question!r}")

        for question in fact.questions_train + fact.questions_eval:
            if fact.answer_key.lower() in question.lower():
                problems.append(f"{where}: question gives away the answer_key: {question!r}")
            form = _normalize(question)
            if form in seen_questions:
                problems.append(
                    f"{where}: question {question!r} duplicates one in fact {seen_questions[form]!r}"
                )
            seen_questions[form] = fact.id

    handbook_train, _ = handbook_split()
    for fact in FACTS:
        if not any(fact.answer_key in paragraph for paragraph in handbook_train):
            problems.append(
                f"fact {fact.id!r}: answer_key {fact.answer_key!r} is in no handbook_train paragraph"
            )
    for index, paragraph in enumerate(HANDBOOK):
        words = len(paragraph.split())
        if not HANDBOOK_MIN_WORDS <= words <= HANDBOOK_MAX_WORDS:
            problems.append(
                f"handbook paragraph {index} has {words} words "
                f"(expected {HANDBOOK_MIN_WORDS}-{HANDBOOK_MAX_WORDS}): {paragraph[:50]!r}..."
            )

    if problems:
        raise ValueError("hotel dataset is invalid:\n  " + "\n  ".join(problems))


# --------------------------------------------------------------------------
# Row builders
# --------------------------------------------------------------------------

def _chat(question: str, answer: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


def _preference(row_id: str, fact: Fact, question: str) -> dict:
    return {
        "id": row_id,
        "fact_id": fact.id,
        "prompt": [{"role": "user", "content": question}],
        "chosen": [{"role": "assistant", "content": fact.answer}],
        "rejected": [{"role": "assistant", "content": fact.wrong_answer}],
    }


def _train_pairs() -> list[tuple[str, Fact, str]]:
    """(row id, fact, question) for every train question, shuffled so facts interleave."""
    pairs = [
        (f"{fact.id}-t{i}", fact, question)
        for fact in FACTS
        for i, question in enumerate(fact.questions_train, start=1)
    ]
    random.Random(0).shuffle(pairs)
    return pairs


def _eval_pairs() -> list[tuple[str, Fact, str]]:
    return [
        (f"{fact.id}-e{i}", fact, question)
        for fact in FACTS
        for i, question in enumerate(fact.questions_eval, start=1)
    ]


def build_files() -> dict[str, list[dict]]:
    """Return the rows of every JSONL file, keyed by file name."""
    train_pairs = _train_pairs()
    eval_pairs = _eval_pairs()
    handbook_train, handbook_eval = handbook_split()
    return {
        "facts.jsonl": [
            {
                "id": fact.id,
                "answer_key": fact.answer_key,
                "answer": fact.answer,
                "wrong_answer": fact.wrong_answer,
                "questions_train": list(fact.questions_train),
                "questions_eval": list(fact.questions_eval),
            }
            for fact in FACTS
        ],
        "train.jsonl": [
            {"id": row_id, "fact_id": fact.id, "messages": _chat(question, fact.answer)}
            for row_id, fact, question in train_pairs
        ],
        "eval.jsonl": [
            {
                "id": row_id,
                "fact_id": fact.id,
                "messages": _chat(question, fact.answer),
                "answer_key": fact.answer_key,
            }
            for row_id, fact, question in eval_pairs
        ],
        "handbook_train.jsonl": [{"text": paragraph} for paragraph in handbook_train],
        "handbook_eval.jsonl": [{"text": paragraph} for paragraph in handbook_eval],
        "preferences_train.jsonl": [_preference(*pair) for pair in train_pairs],
        "preferences_eval.jsonl": [_preference(*pair) for pair in eval_pairs],
    }


# --------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------

def _write_text(path: Path, text: str) -> None:
    with path.open("w", encoding="utf-8", newline="\n") as handle:
        handle.write(text)


def write_dataset(out_dir: Path) -> dict[str, int]:
    """Validate, then write every file into out_dir. Returns rows per JSONL file."""
    validate()
    out_dir.mkdir(parents=True, exist_ok=True)
    files = build_files()
    for name, rows in files.items():
        lines = (json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n" for row in rows)
        _write_text(out_dir / name, "".join(lines))
    counts = {name: len(rows) for name, rows in files.items()}
    _write_text(
        out_dir / "README.md",
        README.format(
            n_facts=counts["facts.jsonl"],
            n_train=counts["train.jsonl"],
            n_eval=counts["eval.jsonl"],
            n_handbook_train=counts["handbook_train.jsonl"],
            n_handbook_eval=counts["handbook_eval.jsonl"],
        ),
    )
    return counts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent / "hotel",
        help="output directory (default: the hotel/ folder next to this script)",
    )
    args = parser.parse_args(argv)
    counts = write_dataset(args.out)
    for name, count in counts.items():
        print(f"{args.out / name}: {count} rows")


if __name__ == "__main__":
    main()
