from kitaru.cli import main

main()
