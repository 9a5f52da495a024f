from genctr.cli import main

main()
