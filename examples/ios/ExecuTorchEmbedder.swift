// all-MiniLM-L6-v2 sentence embeddings with ExecuTorch (model.pte, XNNPACK, int64 inputs [1, 128]).
// SwiftPM: https://github.com/pytorch/executorch.git, branch "swiftpm-1.5.1";
// products executorch, backend_xnnpack, kernels_optimized, kernels_quantized; linker flag -all_load.
import ExecuTorch
import Foundation

final class ExecuTorchEmbedder {
  static let seqLen = 128
  private let module: Module

  init() throws {
    let path = Bundle.main.path(forResource: "model", ofType: "pte")!
    module = Module(filePath: path)
    try module.load("forward")  // load (and pack XNNPACK weights) now, not on the first embed()
  }

  /// A .pte has no input names: inputs go in manifest order (input_ids, attention_mask, token_type_ids).
  func embed(inputIds: [Int64], attentionMask: [Int64], tokenTypeIds: [Int64]) throws -> [Float] {
    let shape = [1, Self.seqLen]
    let outputs = try module.forward([
      Tensor<Int64>(inputIds, shape: shape),       // input_ids
      Tensor<Int64>(attentionMask, shape: shape),  // attention_mask
      Tensor<Int64>(tokenTypeIds, shape: shape),   // token_type_ids
    ])
    // export order: [0] sentence_embedding float32 [1, 384], [1] last_hidden_state [1, 128, 384]
    let embedding: Tensor<Float> = outputs[0].tensor()!
    return embedding.scalars()
  }
}
