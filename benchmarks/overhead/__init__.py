"""The router's overhead (docs/overhead.md): ``bench`` runs it (``scripts/bench_overhead.sh``);
``client`` is its deliberately minimal load client, ``procs`` the servers it starts,
``passthrough`` the minimal aiohttp reference proxy, ``report`` the statistics and table,
``parts`` the per-part CPU breakdown in-process, ``profile`` py-spy stacks summed by part."""
