#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// What tells a changed file from the one loaded: modification time (to the nanosecond), size and
/// inode, from one stat(2) of the path. stat follows symlinks: Kubernetes updates a mounted
/// ConfigMap by swapping a symlink, so the link never changes, only the file it ends at, and
/// the swapped-in file may carry an older time (the inode tells it apart). The map is polled
/// every two seconds; FileManager's attributes cost a stat, an xattr listing and reads of
/// /etc/passwd and /etc/group (owner names) each time.
struct FileStamp: Equatable {
    var seconds: Int
    var nanoseconds: Int
    var size: Int64
    var inode: UInt64
    var device: UInt64

    init?(of path: String) {
        var info = stat()
        guard stat(path, &info) == 0 else { return nil }
        #if canImport(Darwin)
        seconds = Int(info.st_mtimespec.tv_sec)
        nanoseconds = Int(info.st_mtimespec.tv_nsec)
        #else
        seconds = Int(info.st_mtim.tv_sec)
        nanoseconds = Int(info.st_mtim.tv_nsec)
        #endif
        size = Int64(info.st_size)
        inode = UInt64(info.st_ino)
        device = UInt64(info.st_dev)
    }
}
