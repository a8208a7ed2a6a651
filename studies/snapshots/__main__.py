from studies.snapshots.run import main

main()
