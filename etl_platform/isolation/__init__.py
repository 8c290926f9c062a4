"""Each tenant's work in a process of its own, inside a shared run.

A run loads many tenants (a scheduled chunk, a backfill). They do not trust each other, so no
tenant may see another's secrets or failure text, hold it up, or take it down. The run worker
starts one fork server per run (`zygote`), with the platform's environment only and the
loading code already imported; every tenant is then a fork of it (fast: no import), given
that tenant's own secrets, a CPU-time limit, and watched by the run worker (`supervisor`) for
memory and a wall-clock deadline. A tenant that dies or goes over a limit fails alone, with a
reason naming the limit and what it was doing (`progress`). Children never outlive the run:
each process dies with its parent (Linux's parent-death signal) and the run worker kills the
fork server's process group when it stops or is cancelled.

No Dagster here: the run worker maps what a child reports to Dagster events.
"""
