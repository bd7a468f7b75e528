from surfacekit.app import main

main()
