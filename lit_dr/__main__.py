from lit_dr.commands.cli import main

main()
