"""How ``raise_if_failed`` joins the ranks' errors into the one every rank raises.

The same message from several ranks was repeated once per rank only when the texts
differed in any way, and differing texts were joined with no word of which rank said
what (a DTensor on a non-ascending mesh raised its long explanation 4 times on 4 ranks).
"""

from __future__ import annotations

import pytest

from reshard.dist.collective import Outcome, raise_if_failed
from reshard.errors import CheckpointError, LayoutMismatchError, MissingKeysError

OK: Outcome[int] = Outcome(value=1)


def _err(message: str, cls: str = "LayoutMismatchError") -> Outcome[int]:
    return Outcome(error_class=cls, error_message=message)


def _raised(outcomes: list[Outcome[int]]) -> CheckpointError:
    with pytest.raises(CheckpointError) as e:
        raise_if_failed(outcomes)
    return e.value


def test_nothing_failed() -> None:
    raise_if_failed([OK, OK])
    raise_if_failed([])


def test_one_message_from_every_rank_is_said_once() -> None:
    e = _raised([_err("key 'w': bad")] * 4)
    assert type(e) is LayoutMismatchError and str(e) == "key 'w': bad"


def test_one_message_from_some_ranks_names_them() -> None:
    e = _raised([OK, _err("key 'w': bad"), OK, _err("key 'w': bad")])
    assert str(e) == "key 'w': bad (failed on rank 1, 3)"
    assert str(_raised([_err("x")])) == "x"  # one process: no rank to name


def test_different_messages_each_after_the_ranks_that_gave_them() -> None:
    e = _raised([_err("key 'a': 1"), _err("key 'b': 2"), _err("key 'a': 1"), _err("key 'a': 1"),
                 _err("key 'a': 1"), OK])
    assert str(e) == "ranks 0, 2-4: key 'a': 1; rank 1: key 'b': 2 (failed on rank 0, 1, 2, 3, 4)"
    assert type(e) is LayoutMismatchError
    e = _raised([_err("a"), _err("b", "MissingKeysError")])
    assert type(e) is CheckpointError and not isinstance(e, MissingKeysError)  # classes differ
    assert str(e) == "rank 0: a; rank 1: b"


def test_unexpected_exceptions_of_several_ranks_are_joined() -> None:
    """run_local prefixes an unexpected exception with its rank: the same TypeError on 4
    ranks read 'rank 0: TypeError: t; rank 1: TypeError: t; ...'."""
    e = _raised([_err(f"rank {r}: TypeError: t", "CheckpointError") for r in range(4)])
    assert str(e) == "ranks 0-3: TypeError: t"
    e = _raised([OK, _err("rank 1: TypeError: t", "CheckpointError")])
    assert str(e) == "rank 1: TypeError: t (failed on rank 1)"  # as before


def test_many_different_messages_are_counted_past_eight() -> None:
    e = _raised([_err(f"m{r}") for r in range(12)])
    text = str(e)
    assert text.startswith("rank 0: m0; rank 1: m1;") and "rank 7: m7" in text
    assert "m8" not in text and text.endswith("; and 4 other errors on ranks 8-11")
