"""The parts of `bench/perf.py`, one room per concern.

- `plan`: what a run sends (the request bodies) and for how long (`Plan`);
- `stats`: percentiles and slopes;
- `procfs`: CPU time and RSS of a process tree, read from /proc;
- `client`: an HTTP/1.1 client on h11, one blocking shell and one trio shell;
- `service`: one target process: spawn it, wait until it answers, stop it;
- `targets`: the upstream, zai-proxy, nginx and LiteLLM (its venv), started together;
- `load`: load generators (wrk, Python processes) and the order targets take turns in;
- `latency`, `streaming`, `throughput`, `memory`: one measurement each;
- `report`: the tables;
- `profiling`: py-spy on zai-proxy under load.
"""
