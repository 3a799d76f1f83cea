"""Every criterion the CLI accepts has one importance function, and no other exists."""
from edgekit.host.prune.config import CRITERIA
from edgekit.host.prune.groups import IMPORTANCE


def test_criteria_and_importance_registry_agree():
    assert sorted(CRITERIA) == sorted(IMPORTANCE)
