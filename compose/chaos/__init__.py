"""`brokerage chaos` and what the whole-stack fault tests share with it: running `brokerage up`
as a child (stack_process), the load client that keeps a journal of its answers (client), the
faults and their seeded schedule (faults), waiting on the stack's conditions (settle), the
independent auditor (auditor) and the run itself (run)."""
