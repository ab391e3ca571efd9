"""Errors shared by the spec loader and the capacity planner (neither imports the other for
them): a refused spec, and a budget that cannot hold, told apart by type, not by message text."""
from __future__ import annotations


class SpecError(Exception):
    def __init__(self, errors: list[str]):
        self.errors = errors
        super().__init__("\n".join(errors))

    @property
    def over_budget_only(self) -> bool:
        """The spec is valid; only budgets cannot hold (`ultrascalectl plan` exits 1, not 2)."""
        return bool(self.errors) and all(isinstance(e, BudgetProblem) for e in self.errors)


class BudgetProblem(str):
    """A budget message (memory, MongoDB connections, file descriptors, nginx connections)."""
