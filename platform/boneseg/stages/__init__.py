"""Stage modules: one console command each (`boneseg <command>`), thin: parse the
arguments, call the library (`boneseg.core`), print and write. Each has
`add_parser(sub)` and `main(args, cfg) -> int`; `boneseg.cli` lists them."""
