"""Help texts shared by several commands' options, so that the same option reads the same everywhere."""

DATA_HELP = "Store (default: the run's)."
SUBJECTS_HELP = "Subjects, comma-separated (default: all the run's)."
DEVICE_HELP = "Torch device: cpu, cuda, cuda:N or mps (checked before any work starts)."
PROGRESS_HELP = "Show progress bars on stderr."
