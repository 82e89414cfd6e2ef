from repalign.cli.main import main

main()
