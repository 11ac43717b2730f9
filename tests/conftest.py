import os

from hypothesis import HealthCheck, settings

# The suite runs on 2 shared cores: no per-example deadline, a bounded example count. CI's longer
# fuzzing run (.ci/run) sets HYPOTHESIS_PROFILE=ci: ten times the examples. Both derandomized: a
# run draws the same examples on every machine, so a red CI reproduces locally (new draws come
# from changing the strategies or the counts, and from running with HYPOTHESIS_PROFILE=explore).
settings.register_profile("graphattn", deadline=None, max_examples=40, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("ci", deadline=None, max_examples=400, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("explore", deadline=None, max_examples=2000, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "graphattn"))
