"""The experiment layer: runs the machines in topologies and turns the results into tables
(scenarios, sweeps, plots and the CLI grow here). It may use I/O, clocks and seeded random
generators; the layers below it may not."""
