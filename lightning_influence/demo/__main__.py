from lightning_influence.demo import main

main()
