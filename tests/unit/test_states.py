import pytest

from ultrascaled.core.states import TRANSITIONS, State, TransitionError, check_transition


def test_every_state_has_a_row_and_every_target_is_a_state():
    assert set(TRANSITIONS) == set(State)
    assert all(t in State for targets in TRANSITIONS.values() for t in targets)


@pytest.mark.parametrize("old,new", [(State.STOPPED, State.RUNNING), (State.STOPPING, State.RUNNING),
                                     (State.FATAL, State.RUNNING), (State.RUNNING, State.STARTING)])
def test_moves_that_skip_a_step_are_refused(old, new):
    with pytest.raises(TransitionError):
        check_transition(old, new)


def test_every_state_can_reach_stopped():
    for s in State:
        seen, todo = {s}, [s]
        while todo:
            for n in TRANSITIONS[todo.pop()]:
                if n not in seen:
                    seen.add(n)
                    todo.append(n)
        assert State.STOPPED in seen, s
