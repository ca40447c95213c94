"""Process exit codes, one table for every command (documented in the README)."""

OK = 0
FAILURE = 1  # apply: not everything in sync; plan: error; run: unexpected stop
CHANGES_PENDING = 2  # plan: the broker differs from the config
INTERNAL = 70  # EX_SOFTWARE: a bug; one line on stderr, never a traceback
IO_ERROR = 74  # EX_IOERR: the output could not be written (a full disk, /dev/full)
CONFIG = 78  # EX_CONFIG: the config file is unusable (systemd must not restart)
INTERRUPTED = 130  # one-shot command stopped by Ctrl-C
BROKEN_PIPE = 141  # the reader of the output went away (`| head`): 128 + SIGPIPE, as the shell says

# `check` follows the monitoring-plugin convention instead.
CHECK_OK = 0
CHECK_WARNING = 1
CHECK_CRITICAL = 2
CHECK_UNKNOWN = 3
