"""Cutover and rollback: fence the writer, drain, verify, sync sequences, arm the reverse
stream, switch (ARCHITECTURE.md section 9).

- ``switch``  :class:`Cutover`: the steps in order; rollback is the mirror image
- ``plan``    a switch's plan, its steps' results and outcome, the journal
- ``preflight`` every reason not to start, before any write is blocked
- ``fence``   fencing a side's writes (locks + refusing trigger) and the log's markers
- ``decision`` the point of no return: the decision recorded on both sides before the hook
- ``verify``  the verification split around the fence: pre-fence proof, the pause's tail only
"""

from replicator.cutover.plan import Outcome, StepResult
from replicator.cutover.switch import Cutover

__all__ = ["Cutover", "Outcome", "StepResult"]
