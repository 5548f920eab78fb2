"""What every layer may use at run time: the `--device` / precision rule (`devices`), the memory
budget (`budget`) and the model's named stages for the profiler (`profiling`)."""
