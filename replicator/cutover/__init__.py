"""Cutover and rollback: fence the writer, drain, verify, sync sequences, arm the reverse
stream, switch (ARCHITECTURE.md section 9).

- ``switch``  :class:`Cutover`: the steps, timed and journaled; rollback is the mirror image
- ``fence``   fencing a side's writes (locks + refusing trigger) and the log's markers
- ``decision`` the point of no return: the decision recorded on both sides before the hook
- ``verify``  the verification split around the fence: pre-fence proof, the pause's tail only
"""

from replicator.cutover.switch import Cutover, Outcome, StepResult

__all__ = ["Cutover", "Outcome", "StepResult"]
