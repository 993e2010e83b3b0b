"""Suite-wide settings. Hypothesis's per-example deadline (200 ms) is a timed assertion: a busy 2-core CI machine
or a file system hiccup fails a correct test (test_clock once took 264 ms). Speed belongs in bench/."""

from hypothesis import settings

settings.register_profile("no-deadline", deadline=None)
settings.load_profile("no-deadline")
