"""`make bench`: tokens/s, time to first step, peak memory and MFU of the recipes against `trl sft`."""
