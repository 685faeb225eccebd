@_exported import CKernels
