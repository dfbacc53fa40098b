"""The load-test harness: launch a server, drive it with a workload, measure, sweep, report."""
