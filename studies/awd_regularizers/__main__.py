from studies.awd_regularizers.run import main

main()
