import os

from hypothesis import settings

# CI gets more examples; local runs stay quick.  No deadline: the machines are shared.
settings.register_profile("ci", max_examples=200, deadline=None, print_blob=True)
settings.register_profile("dev", max_examples=50, deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")
