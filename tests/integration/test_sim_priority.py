"""A simulated engine with vLLM's ``--scheduling-policy priority`` over a real socket: the
``priority`` field of each request (sent with the openai client's ``extra_body``, as a
vLLM user does) orders the waiting queue; an fcfs engine keeps arrival order."""

from __future__ import annotations

import asyncio

import openai
import pytest

from slorouter.models.profile import StepProfile
from slorouter.models.static import LinearStep
from slorouter.simengine.server import serve_engines
from tests.integration.test_sim_server import poll

ONE = StepProfile(name="one", step=LinearStep(0.005, 0, 0, 0), max_num_seqs=1)


@pytest.mark.parametrize(
    ("scheduling", "served"),
    [
        # "first" keeps its slot: a waiting request never preempts a running one (as vLLM)
        ("priority", ["first", "a", "b", "c"]),
        ("fcfs", ["first", "c", "a", "b"]),
    ],
)
async def test_waiting_requests_are_served_by_priority(scheduling: str, served: list[str]) -> None:
    pri = scheduling == "priority"
    async with serve_engines(1, profile=ONE, scheduling=scheduling) as f:
        eng = f.engines[0]
        client = openai.AsyncOpenAI(base_url=f.urls[0] + "/v1", api_key="x", max_retries=0)
        order: list[str] = []

        async def send(name: str, priority: int, tokens: int) -> None:
            await client.completions.create(
                model="sim-llama",
                prompt=f"request {name}",
                max_tokens=tokens,
                extra_body={"ignore_eos": True, "priority": priority if pri else 0},
            )
            order.append(name)

        try:
            # the one slot is busy; then three requests queue in the order c, a, b
            tasks = [asyncio.create_task(send("first", 100, 40))]
            await poll(lambda: eng.model.num_running == 1)
            for i, (name, prio) in enumerate((("c", 30), ("a", -1), ("b", 20)), start=1):
                tasks.append(asyncio.create_task(send(name, prio, 3)))
                await poll(lambda i=i: eng.model.num_waiting == i)
            await asyncio.gather(*tasks)
        finally:
            await client.close()
    assert order == served
