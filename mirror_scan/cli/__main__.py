from mirror_scan.cli.main import main

main()
