from studies.alternation_grid.run import main

main()
