class Partition:
    pass
