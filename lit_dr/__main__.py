from lit_dr.cli import main

main()
