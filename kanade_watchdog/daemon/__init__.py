"""`kanade-watchdog run`: the supervisor, the work queue and the one reconciler, timers."""
