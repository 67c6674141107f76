"""Start-up at scale: listing + verification of a generated ImageNet-layout folder, first start
(every file decoded) vs restart (the image check cache in --model_dir, nothing decoded) vs a
restart after 1 % of the files changed; and listing alone, one thread vs LISTING_THREADS.

    python -m bench.startup                      # 20,000 JPEGs of 180-500 px in 100 classes

The files are written once (reused if the folder is complete) and are in the page cache when
measured: a cold network file system makes listing and the first start slower, not the restart
relatively faster.
"""
if __name__ == "__main__":  # before TensorFlow loads: fast allocator (ifnd_tf/runtime.py)
    from ifnd_tf import runtime

    runtime.prepare()

import argparse
import os
import time

from bench import common, imagenet_like
from ifnd_tf import sources


def timed(function) -> tuple[float, object]:
    start = time.perf_counter()
    result = function()
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num_images", type=int, default=20_000)
    parser.add_argument("--num_classes", type=int, default=100)
    parser.add_argument("--min_size", type=int, default=imagenet_like.SIZE_RANGE[0])
    parser.add_argument("--max_size", type=int, default=imagenet_like.SIZE_RANGE[1])
    parser.add_argument("--root", default="/tmp/ifnd_startup_bench")
    parser.add_argument("--name", default="startup")
    args = parser.parse_args()

    seconds, split_dir = timed(lambda: imagenet_like.write_train_folder(
        args.root, args.num_images, args.num_classes, (args.min_size, args.max_size)))
    print(f"data ready in {seconds:.1f} s: {split_dir}", flush=True)
    dataset = f"folder:{args.root}"
    model_dir = os.path.join(args.root, "model_dir")
    cache = os.path.join(model_dir, "image_check_train.json.gz")
    if os.path.exists(cache):
        os.remove(cache)

    parallel = sources.LISTING_THREADS
    sources.LISTING_THREADS = 1
    list_serial, listing = timed(lambda: sources._list_class_folders(split_dir))
    sources.LISTING_THREADS = parallel
    list_parallel, _ = timed(lambda: sources._list_class_folders(split_dir))
    first, source = timed(lambda: sources.load_source(dataset, cache_dir=model_dir))
    restart, again = timed(lambda: sources.load_source(dataset, cache_dir=model_dir))
    assert again.num_examples == source.num_examples == len(listing.paths)
    changed = listing.paths[::100]  # 1 %: new mtime, same bytes
    for path in changed:
        os.utime(path)
    partial, _ = timed(lambda: sources.load_source(dataset, cache_dir=model_dir))

    rows = [("listing, 1 thread", list_serial),
            (f"listing, {parallel} threads", list_parallel),
            ("first start: listing + decode every file", first),
            ("restart: listing + image check cache", restart),
            (f"restart after {len(changed)} files changed", partial)]
    common.print_table(f"{source.num_examples} JPEGs, {args.min_size}-{args.max_size} px, "
                       f"{args.num_classes} classes", ["phase", "seconds"], rows)
    print(f"\nfirst start / restart: {first / restart:.0f}x; cache file "
          f"{os.path.getsize(cache) / 1e6:.2f} MB")
    common.write_json(args.name, {
        "num_images": source.num_examples, "num_classes": args.num_classes,
        "size_range": [args.min_size, args.max_size], "listing_threads": parallel,
        "seconds": dict(rows), "cache_bytes": os.path.getsize(cache),
        "changed_files": len(changed)})


if __name__ == "__main__":
    main()
