"""launcher/slurm_client.py: what scontrol prints, read back."""

from __future__ import annotations

from launcher import slurm_client


def test_scontrol_output_is_parsed_with_spaces_in_values():
    (job,) = slurm_client.parse_scontrol("JobId=5 JobName=a b Reason=None Command=/x/y StdOut=/o/slurm-5.out\n")
    assert job["JobName"] == "a b" and job["StdOut"] == "/o/slurm-5.out"


def test_a_job_forgotten_by_slurm_is_summarized_from_its_state():
    (job,) = slurm_client.parse_scontrol("JobId=9 JobName=sft JobState=TIMEOUT Reason=TimeLimit NodeList=(null) "
                                         "RunTime=04:00:00 Restarts=2 ExitCode=0:15\n")
    assert job.summary() == "job 9 (sft): TIMEOUT (TimeLimit), run time 04:00:00, restarts 2, exit code 0:15"
