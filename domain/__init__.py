"""The domain: commands, events, the job state machine, configs and dataset checks. Standard library only."""
