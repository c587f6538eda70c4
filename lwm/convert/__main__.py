from lwm.convert import main

main()
