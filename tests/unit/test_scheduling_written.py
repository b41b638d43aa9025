"""A schedule's written form: the versioned token, '@file', the old seed-only forms, and
the errors a bad token gets. Torch-free."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings, strategies as st

from pytest_streamorder.scheduling import (MAX_INLINE, POLICIES, ReplayTokenError, Schedule,
                                           parse_replay)


@st.composite
def schedules(draw, with_options=st.booleans()):
    policy = draw(st.sampled_from(POLICIES))
    seed = draw(st.none() | st.integers(-2**40, 2**40))
    if draw(with_options):
        options = draw(st.lists(st.integers(2, 3000), max_size=400))
        choices = [draw(st.integers(0, n - 1)) for n in options]
        return Schedule(policy, seed, tuple(choices), tuple(options))
    return Schedule(policy, seed, tuple(draw(st.lists(st.integers(0, 2**31), max_size=400))))


@settings(max_examples=300)
@given(schedules())
def test_token_round_trips(schedule):
    token = schedule.token
    back = parse_replay(token)
    assert back == schedule
    assert back.choices == schedule.choices and back.options == schedule.options
    assert (back.policy, back.seed) == (schedule.policy, schedule.seed)
    assert token.startswith(f"v1.{schedule.policy}.s")
    assert set(token) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


def test_token_is_compact():
    # What the random policy records: small numbers of options, mostly 2..4.
    import random

    rng = random.Random(0)
    options = [rng.choice((2, 3, 3, 4)) for _ in range(120)]
    s = Schedule("random", 0, tuple(rng.randrange(n) for n in options), tuple(options))
    assert len(s.token) <= MAX_INLINE
    # Few decisions: a few characters.
    assert Schedule("delay", 5, (1,), (4,)).token == "v1.delay.s5." + Schedule("delay", 5, (1,), (4,)).token.split(".")[3]
    assert len(Schedule("delay", 5, (1,), (4,)).token) <= 20
    assert len(Schedule("eager", 0, ()).token) <= 20


def test_long_bodies_are_deflated():
    s = Schedule("random", 1, (0, 1) * 500, (2, 3) * 500)
    assert len(s.token) < 100  # 1000 decisions of a regular pattern
    assert parse_replay(s.token) == s


def test_old_and_backend_forms_are_still_read():
    s = parse_replay("delay:5")
    assert (s.policy, s.seed, s.choices, s.backend) == ("delay", 5, None, "sim")
    assert s.token == "delay:5"
    c = parse_replay("cuda:-3")
    assert (c.policy, c.seed, c.choices, c.backend) == ("cuda", -3, None, "cuda")
    assert c.token == "cuda:-3"
    assert parse_replay("v1.cuda.s7") == Schedule("cuda", 7, None)
    assert parse_replay("  random:2 \n") == Schedule("random", 2, None)


def test_seedless_and_empty_schedules():
    for s in (Schedule("random", None, (1, 0), (2, 2)), Schedule("eager", 0, ()),
              Schedule("lazy", -1, (), ())):
        assert parse_replay(s.token) == s


GOOD = Schedule("random", 3, (0, 2, 1, 1, 3, 0, 0, 2), (2, 3, 2, 3, 4, 2, 2, 3)).token


@pytest.mark.parametrize("token, message", [
    ("", "is not a replay token; expected 'v1.<policy>.s<seed>.<payload>'"),
    ("fast:1", "unknown policy 'fast'"),
    ("delay:x", "the seed in replay token 'delay:x' must be an int, got 'x'"),
    ("v2.random.s0.AAAA", "has version 'v2'; this pytest-streamorder reads 'v1'"),
    ("v1.fifo.s0.AAAA", "unknown policy 'fifo'"),
    ("v1.random.s0", "has 3 dot-separated parts; expected 4"),
    ("v1.random.x0.AAAA", "the seed field should be 's<seed>', got 'x0'"),
    ("v1.random.s0x.AAAA", "must be an int, got '0x'"),
    ("v1.random.s0.AA+A", "characters outside base64url"),
    ("v1.random.s0.A", "not valid base64url"),
    ("v1.random.s0.AA", "too short"),
    ("v1.random.s0.-AAA", "format flags 0xf8"),
    ("v1.cuda.s1.AAA", "a cuda token is 'v1.cuda.s<seed>'"),
    (GOOD.replace("v1.random.s3", "v1.random.s4"), "fails its checksum"),
    (GOOD.replace("v1.random", "v1.delay"), "fails its checksum"),
])
def test_bad_tokens_say_what_is_wrong(token, message):
    with pytest.raises(ReplayTokenError) as info:
        parse_replay(token)
    assert message in str(info.value)
    assert isinstance(info.value, ValueError)


def test_a_cut_or_altered_token_is_never_read_as_another_schedule():
    good = parse_replay(GOOD)
    header = GOOD.rsplit(".", 1)[0] + "."
    for cut in range(len(header), len(GOOD)):
        with pytest.raises(ReplayTokenError):
            parse_replay(GOOD[:cut])
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    for i in range(len(header), len(GOOD)):
        for ch in alphabet[::7]:
            if ch == GOOD[i]:
                continue
            altered = GOOD[:i] + ch + GOOD[i + 1:]
            try:
                assert parse_replay(altered) == good  # only padding bits may change
            except ReplayTokenError:
                pass


def test_write_and_read_a_schedule_file(tmp_path):
    s = Schedule("pct", 9, tuple(range(1, 300)), tuple(range(2, 301)))
    path = s.write(tmp_path / "sub", stem="tests/test_x.py::test_y[a b]", note="test tests/test_x.py::test_y")
    assert path.parent == tmp_path / "sub" and path.suffix == ".schedule"
    assert path.name.startswith("tests_test_x.py_test_y_a_b-")
    text = path.read_text()
    assert "# test tests/test_x.py::test_y" in text and "# policy pct, seed 9, 299 recorded choices" in text
    assert text.splitlines()[-1] == s.token
    assert parse_replay(f"@{path}") == s
    assert s.write(tmp_path / "sub", stem="tests/test_x.py::test_y[a b]") == path  # same schedule, same name


def test_replay_argument_is_inline_up_to_the_limit_else_a_file(tmp_path, monkeypatch):
    short = Schedule("random", 1, (1, 0, 2), (2, 2, 3))
    assert short.replay_argument(tmp_path) == short.token
    assert not any(tmp_path.iterdir())  # nothing written
    import random

    rng = random.Random(1)
    options = [rng.randrange(2, 9) for _ in range(2000)]
    long = Schedule("random", 1, tuple(rng.randrange(n) for n in options), tuple(options))
    assert len(long.token) > MAX_INLINE
    monkeypatch.chdir(tmp_path)
    arg = long.replay_argument(tmp_path / "cache", stem="t.py::t")
    assert arg.startswith("@cache" + os.sep) and len(arg) <= MAX_INLINE  # relative to the cwd
    assert parse_replay(arg) == long
    elsewhere = long.replay_argument(tmp_path / "cache", stem="t.py::t")
    assert elsewhere == arg


def test_bad_schedule_files(tmp_path):
    with pytest.raises(ReplayTokenError, match="'@' must be followed by the path"):
        parse_replay("@")
    with pytest.raises(ReplayTokenError, match="cannot read the schedule file"):
        parse_replay(f"@{tmp_path / 'missing.schedule'}")
    two = tmp_path / "two.schedule"
    two.write_text(f"# two tokens\n{GOOD}\n{GOOD}\n")
    with pytest.raises(ReplayTokenError, match="should hold one token.*it holds 2 other lines"):
        parse_replay(f"@{two}")
    chained = tmp_path / "chained.schedule"
    chained.write_text(f"@{two}\n")
    with pytest.raises(ReplayTokenError, match="names another file"):
        parse_replay(f"@{chained}")
    bad = tmp_path / "bad.schedule"
    bad.write_text(GOOD[:-3] + "\n")
    with pytest.raises(ReplayTokenError, match=r"in the schedule file .*bad\.schedule"):
        parse_replay(f"@{bad}")


def test_schedule_checks_its_options():
    with pytest.raises(ValueError, match="options"):
        Schedule("random", 0, (2,), (2,))
    with pytest.raises(ValueError, match="options"):
        Schedule("random", 0, (0, 1), (2,))
    assert Schedule("random", 0, [1, 0]).choices == (1, 0)  # a list becomes a tuple
    # options are not part of a schedule's identity (a hand-built one may lack them)
    assert Schedule("random", 0, (1,), (2,)) == Schedule("random", 0, (1,))
