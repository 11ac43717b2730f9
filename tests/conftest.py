from hypothesis import HealthCheck, settings

# The suite runs on 2 shared cores: no per-example deadline, a bounded example count.
settings.register_profile("graphattn", deadline=None, max_examples=40,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("graphattn")
