import os

from hypothesis import Phase, settings

# CI gets more examples; local runs stay quick.  No deadline: the machines are shared.
settings.register_profile("ci", max_examples=200, deadline=None, print_blob=True)
settings.register_profile("dev", max_examples=50, deadline=None)
# Mutation runs only need to know that a test fails, not its smallest failing example.
settings.register_profile(
    "mutants", max_examples=50, deadline=None, phases=[Phase.explicit, Phase.reuse, Phase.generate]
)
if os.environ.get("ADAMAX_MUTANTS"):
    settings.load_profile("mutants")
else:
    settings.load_profile("ci" if os.environ.get("CI") else "dev")
