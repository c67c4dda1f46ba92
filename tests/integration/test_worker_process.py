"""Apply workers in processes of their own (replicator.runtime.worker_process): the child's error
reaches the parent as the error it is, and a stop request ends the child cleanly."""

from __future__ import annotations

import threading
import time

import pytest
from pydantic import SecretStr

from replicator.errors import AuthenticationFailed
from replicator.runtime.worker_process import ApplyProcess
from tests.support import Env


def test_the_childs_error_is_raised_in_the_parent_with_its_class_and_hint(env: Env) -> None:
    s = env.settings(mapping="identity:public.item")
    wrong = s.target.model_copy(update={"password": SecretStr("not-the-password")})
    s = s.model_copy(update={"target": wrong})
    worker = ApplyProcess(s, "fwd", "apply-0")
    with pytest.raises(AuthenticationFailed) as err:
        worker.run(threading.Event())
    assert "not-the-password" not in str(err.value)
    assert err.value.hint


def test_a_stop_request_ends_the_child_cleanly(env: Env) -> None:
    with env.target_conn() as c:
        c.execute("CREATE TABLE item (id int PRIMARY KEY)")
    worker = ApplyProcess(env.settings(mapping="identity:public.item"), "fwd", "apply-0")
    stop = threading.Event()
    done: list[BaseException | None] = []

    def body() -> None:
        try:
            worker.run(stop)
            done.append(None)
        except BaseException as exc:
            done.append(exc)

    t = threading.Thread(target=body)
    t.start()
    deadline = time.monotonic() + 60
    while worker.pid is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(2)  # the child is up and polling Kafka
    stop.set()
    t.join(90)
    assert not t.is_alive()
    assert done == [None]
