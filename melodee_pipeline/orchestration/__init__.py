import warnings

# Dagster's own sensor decorator passes a beta parameter; the warning is not ours to act on.
warnings.filterwarnings("ignore", message="Parameter `owners`")
