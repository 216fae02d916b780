"""`captioner sweep`: variants x seeds of an experiment, trained, scored and compared with
paired confidence intervals (see spec.py for the sweep file, runner.py for the runs)."""
