from studies.paper_grid.run import main

main()
