from studies.dni_stability.run import main

main()
