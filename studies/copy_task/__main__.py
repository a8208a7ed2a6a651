from studies.copy_task.run import main

main()
