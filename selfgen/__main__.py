from selfgen.cli import main

main()
