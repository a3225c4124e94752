from supervise_smtp.cli import main

main()
