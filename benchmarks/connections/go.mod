module relay.invalid/benchmarks/connections

go 1.22
